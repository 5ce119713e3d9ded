// Host entry points of the CUDA engines (softmax_engine_cuda.cu, pairwise_engine_cuda.cu).
// They assume checked arguments (bindings.cpp validates every one, names it in the error,
// and sets the device guard); each runs its kernels on the current stream.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace ck_cuda {

// --- softmax family ---------------------------------------------------------------------
at::Tensor inverse_norms_cuda(const at::Tensor& x, bool normalize);
std::vector<at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& rq, const at::Tensor& rk,
                                     const at::Tensor& scale, const at::Tensor& row_key,
                                     const at::Tensor& col_key,
                                     const c10::optional<at::Tensor>& extra, bool mask_diag,
                                     bool need_col, int64_t programs,
                                     const c10::optional<at::Tensor>& xmul = c10::nullopt);
std::vector<at::Tensor> backward_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& scale, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& lse,
                                      const at::Tensor& clse, const at::Tensor& g_lse,
                                      const at::Tensor& g_pos, const at::Tensor& g_clse,
                                      bool mask_diag, bool normalize, bool deterministic,
                                      bool need_dq = true, bool need_dk = true,
                                      const c10::optional<at::Tensor>& xmul = c10::nullopt,
                                      const c10::optional<at::Tensor>& xlse = c10::nullopt,
                                      const c10::optional<at::Tensor>& g_xlse = c10::nullopt);

// forward returns (lse (N,), pos (N,), clse (M,) or (0,), xlse (T, N)): with xmul (T,),
// T ≤ ck::kMaxExtraLse, the log-sum-exps of xmul[t]·S over each row's negatives (valid,
// keys differ), -inf for a row without any; (0, N) without xmul.
// need_dq / need_dk: whether the queries / keys need a gradient; one not needed is not
// computed and comes back as a (0, D) tensor — the backward of a frozen key bank is the
// logit recompute and dQ only. xmul, xlse (T, N), g_xlse (T, N): the extra log-sum-exps'
// terms of dS (all given, or none).
//
// dx (input dtype, preallocated like x) from G (acc dtype, rows × D, or splits × rows × D
// partial copies summed in order): the F.normalize
// backward dx = scale·r·(G' − <G', x> r² x), G' = G − diag·r·x (diag null: G' = G; scale
// null: 1; normalize false: r = 1, no radial term). Shared by both engines.
void norm_backward_cuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& g,
                        const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& diag, bool normalize, at::Tensor& dx);

// --- pairwise engine (kind 0 = SigLIP, 1 = Hadsell) -------------------------------------
at::Tensor pair_forward_cuda(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& rq, const at::Tensor& rk,
                             const at::Tensor& params, const at::Tensor& row_key,
                             const at::Tensor& col_key, bool mask_diag);
std::vector<at::Tensor> pair_backward_cuda(int64_t kind, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& rq,
                                           const at::Tensor& rk, const at::Tensor& params,
                                           const at::Tensor& row_key, const at::Tensor& col_key,
                                           const at::Tensor& g_row, bool mask_diag,
                                           bool normalize, bool want_rows, bool deterministic,
                                           bool need_dq = true, bool need_dk = true);
std::vector<at::Tensor> hardest_pairs_cuda(const at::Tensor& x, const at::Tensor& rx,
                                           const at::Tensor& key);
at::Tensor distance_strip_cuda(const at::Tensor& x, const at::Tensor& nsq, int64_t row0,
                               int64_t rows);

}  // namespace ck_cuda
