// The softmax-family engine in CUDA C++: the same contract as engines/softmax.py.
//
// Tiles (compile-time, per input type; see TileShape):
//   half/bf16/fp32: 64×64 logit tiles, D streamed in 32-wide chunks, 128 threads (4 warps).
//   fp64:           32×32 tiles (the same shared-memory bytes).
// Why: a 64×64 fp32 logit tile plus two 64×32 operand chunks and a 64×64 dS tile is ~37 KB
// of shared memory per block, so 4 blocks fit an A100 SM (164 KB) and 6 an H100 SM
// (228 KB): enough warps to hide the exp/shuffle latency of the epilogue, which is the
// point of fusing it. 4 warps × (32×32) map the 64×64 tile onto m16n16k16 tensor-core
// fragments (wmma → HMMA on sm_80 and sm_90) for half inputs; fp32/fp64 use exact FMA
// (SIMT) products, each thread owning an 8×4 (fp64: 4×2) register micro-tile.
//
// Kernels:
//   inv_norm_kernel         r_i = 1/max(||x_i||, eps)
//   fwd_kernel              row lse/pos; per-program column partials (CLIP), persistent
//   merge_col_kernel        column lse from the partials, fixed order
//   bwd_kernel              owned rows (or columns, TRANSPOSED) recompute S, form dS, and
//                           accumulate dA (owned, plain stores) and dB (ATOMIC_B) in D chunks
//   norm_backward_kernel    scale and the F.normalize backward, written in the input dtype
// All rules that decide a value come from ../tile_math.h, shared with the CPU engine.
// The tile machinery (loaders, tile products, dS staging) is in tile_products.cuh, shared
// with the pairwise engine (pairwise_engine_cuda.cu).
#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "engine_cuda.h"
#include "launch.cuh"
#include "tile_products.cuh"

namespace ck_cuda {
namespace {

// ---------------------------------------------------------------------------------------
// Row-wise kernels
// ---------------------------------------------------------------------------------------
template <typename In>
__global__ void __launch_bounds__(kThreads)
    inv_norm_kernel(const In* __restrict__ X, acc_t<In>* __restrict__ R, int64_t n, int64_t D) {
  using Acc = acc_t<In>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  Acc sq = 0;
  for (int64_t c = threadIdx.x % 32; c < D; c += 32) {
    const Acc v = load_acc<Acc>(&X[row * D + c]);
    sq += v * v;
  }
  sq = warp_sum(sq);
  if (threadIdx.x % 32 == 0) R[row] = ck::inverse_norm(sq);
}

// dX from G = Σ_j dS_ij r_j k_j: dx = scale·r·(G' − radial·x) with G' = G − diag_i·r·x
// (diag: the pairwise engine's Σ_j dS_ij of a distance loss; null for the softmax family),
// one warp per row. SCALE null means 1.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    norm_backward_kernel(const In* __restrict__ X, const acc_t<In>* __restrict__ R,
                         const acc_t<In>* __restrict__ G, const acc_t<In>* __restrict__ SCALE,
                         const acc_t<In>* __restrict__ DIAG, In* __restrict__ DX, int64_t n,
                         int64_t D, bool normalize) {
  using Acc = acc_t<In>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const int lane = threadIdx.x % 32;
  const Acc scale = SCALE != nullptr ? *SCALE : Acc(1);
  const Acc r = normalize ? R[row] : Acc(1);
  const Acc diag = DIAG != nullptr ? DIAG[row] * r : Acc(0);
  // G' (the softmax family has no diag term and reads G unchanged).
  auto g_at = [&](int64_t c, Acc x) { return DIAG != nullptr ? G[row * D + c] - diag * x : G[row * D + c]; };
  Acc radial = 0;
  if (normalize) {
    Acc gx = 0;
    for (int64_t c = lane; c < D; c += 32) {
      const Acc x = load_acc<Acc>(&X[row * D + c]);
      gx += g_at(c, x) * x;
    }
    radial = ck::radial_coef(warp_sum(gx), r);
  }
  for (int64_t c = lane; c < D; c += 32) {
    const Acc x = load_acc<Acc>(&X[row * D + c]);
    DX[row * D + c] = from_acc<In, Acc>(ck::normalized_grad(scale, r, g_at(c, x), radial, x));
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <typename In>
struct FwdParams {
  using Acc = acc_t<In>;
  const In* q;
  const In* k;
  const Acc* rq;
  const Acc* rk;
  const Acc* scale;
  const int64_t* row_key;
  const int64_t* col_key;
  const Acc* extra;  // nullable
  Acc* lse;
  Acc* pos;
  Acc* col_m;  // [programs, M], nullable unless need_col
  Acc* col_l;
  int64_t n, m, d;
  bool mask_diag, need_col;
};

template <typename In>
__global__ void __launch_bounds__(kThreads, 2) fwd_kernel(const FwdParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN;
  constexpr int kRowsPerWarp = BM / kWarps, kColsPerLane = BN / 32;
  __shared__ Smem<In> sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Acc scale = *p.scale;
  const int64_t col_base = static_cast<int64_t>(blockIdx.x) * p.m;
  const int64_t row_blocks = (p.n + BM - 1) / BM;
  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const int64_t i0 = rb * BM;
    for (int r = threadIdx.x; r < BM; r += kThreads) {
      const int64_t i = i0 + r;
      const bool has_extra = p.extra != nullptr && i < p.n;
      sm.row_m[r] = has_extra ? p.extra[i] : ck::neg_inf<Acc>();
      sm.row_l[r] = has_extra ? Acc(1) : Acc(0);
      sm.row_pos[r] = 0;
    }
    for (int64_t j0 = 0; j0 < p.m; j0 += BN) {
      tile_dots(sm, p.q, p.k, i0, j0, p.n, p.m, p.d);
      // Row pass: one warp per row, lanes across the columns.
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int r = warp * kRowsPerWarp + rr;
        const int64_t i = i0 + r;
        if (i >= p.n) {
          for (int c = lane; c < BN; c += 32) sm.s[r][c] = ck::neg_inf<Acc>();
          continue;
        }
        const Acc sa = scale * p.rq[i];
        const int64_t key = p.row_key[i];
        Acc s_vals[kColsPerLane];
        Acc mx = ck::neg_inf<Acc>(), pos = 0;
#pragma unroll
        for (int t = 0; t < kColsPerLane; ++t) {
          const int c = lane + 32 * t;
          const int64_t j = j0 + c;
          const bool valid = j < p.m && !(p.mask_diag && i == j);
          const Acc s = valid ? sm.s[r][c] * sa * p.rk[j] : ck::neg_inf<Acc>();
          if (valid && p.col_key[j] == key) pos += s;
          s_vals[t] = s;
          sm.s[r][c] = s;
          mx = s > mx ? s : mx;
        }
        mx = warp_max(mx);
        pos = warp_sum(pos);
        const Acc m_old = sm.row_m[r];
        const Acc m_new = m_old > mx ? m_old : mx;
        const Acc shift = ck::lse_shift(m_new);
        Acc l = 0;
#pragma unroll
        for (int t = 0; t < kColsPerLane; ++t) l += exp(s_vals[t] - shift);
        l = warp_sum(l);
        __syncwarp();
        if (lane == 0) {
          sm.row_l[r] = sm.row_l[r] * exp(m_old - shift) + l;
          sm.row_m[r] = m_new;
          sm.row_pos[r] += pos;
        }
      }
      __syncthreads();
      if (p.need_col) {
        // Column pass over the masked logits: one thread per column.
        for (int c = threadIdx.x; c < BN; c += kThreads) {
          const int64_t j = j0 + c;
          if (j >= p.m) continue;
          Acc mx = p.col_m[col_base + j];
          for (int r = 0; r < BM; ++r) mx = sm.s[r][c] > mx ? sm.s[r][c] : mx;
          const Acc shift = ck::lse_shift(mx);
          Acc l = p.col_l[col_base + j] * exp(p.col_m[col_base + j] - shift);
          for (int r = 0; r < BM; ++r) l += exp(sm.s[r][c] - shift);
          p.col_m[col_base + j] = mx;
          p.col_l[col_base + j] = l;
        }
      }
      __syncthreads();
    }
    for (int r = threadIdx.x; r < BM; r += kThreads) {
      const int64_t i = i0 + r;
      if (i < p.n) {
        p.lse[i] = ck::finish_lse(sm.row_m[r], sm.row_l[r]);
        p.pos[i] = sm.row_pos[r];
      }
    }
    __syncthreads();
  }
}

template <typename Acc>
__global__ void merge_col_kernel(const Acc* __restrict__ col_m, const Acc* __restrict__ col_l,
                                 Acc* __restrict__ clse, int64_t programs, int64_t m) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  Acc mx = ck::neg_inf<Acc>(), l = 0;
  for (int64_t p = 0; p < programs; ++p) ck::merge_lse(mx, l, col_m[p * m + j], col_l[p * m + j]);
  clse[j] = ck::finish_lse(mx, l);
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <typename In>
struct BwdParams {
  using Acc = acc_t<In>;
  const In* a;  // owned side: rows of S, or its columns when TRANSPOSED
  const In* b;
  const Acc* ra;
  const Acc* rb;
  const Acc* scale;
  const int64_t* row_key;
  const int64_t* col_key;
  const Acc* lse;
  const Acc* g_lse;
  const Acc* g_pos;
  const Acc* clse;    // nullable
  const Acc* g_clse;  // nullable
  Acc* da;            // [na, D], owned rows: plain read-modify-write
  Acc* db;            // [nb, D], atomics (ATOMIC_B) or unused
  Acc* dscale;        // [na] or nullable
  int64_t na, nb, d;
  bool mask_diag;
};

template <typename In, bool TRANSPOSED, bool ATOMIC_B, bool HAS_COL>
__global__ void __launch_bounds__(kThreads, 2) bwd_kernel(const BwdParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN, BK = Smem<In>::BK;
  constexpr int kRowsPerWarp = BM / kWarps, kColsPerLane = BN / 32;
  constexpr int LDI = Smem<In>::LDI;
  __shared__ Smem<In> sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Acc scale = *p.scale;
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * BM;
  // Per owned row: Σ_b dS·cos (the scale gradient), kept by the row's warp in shared
  // memory (a register array indexed by a runtime row would live in local memory).
  for (int r = threadIdx.x; r < BM; r += kThreads) sm.row_pos[r] = 0;
  __syncthreads();
  for (int64_t b0 = 0; b0 < p.nb; b0 += BN) {
    tile_dots(sm, p.a, p.b, a0, b0, p.na, p.nb, p.d);
    // dS, one warp per owned row; the same S rounding as the forward.
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t ia = a0 + r;
      const bool a_ok = ia < p.na;
      const Acc ra = a_ok ? p.ra[ia] : Acc(0);
      Acc part = 0;
#pragma unroll
      for (int t = 0; t < kColsPerLane; ++t) {
        const int c = lane + 32 * t;
        const int64_t ib = b0 + c;
        const bool valid = a_ok && ib < p.nb && !(p.mask_diag && ia == ib);
        Acc ds = 0;
        const Acc dots = sm.s[r][c];
        if (valid) {
          const Acc rb = p.rb[ib];
          const Acc s = TRANSPOSED ? dots * (scale * rb) * ra : dots * (scale * ra) * rb;
          const int64_t i = TRANSPOSED ? ib : ia;  // row of S
          const int64_t j = TRANSPOSED ? ia : ib;  // column of S
          const Acc gc = HAS_COL ? p.g_clse[j] : Acc(0);
          const Acc ec = HAS_COL ? exp(s - p.clse[j]) : Acc(0);
          ds = ck::logit_grad(p.g_lse[i], exp(s - p.lse[i]), p.row_key[i] == p.col_key[j],
                              p.g_pos[i], gc, ec);
          part += ds * (dots * ra * rb);
        }
        sm.s[r][c] = ds;  // only this lane reads or writes element (r, c) here
      }
      part = warp_sum(part);
      if (lane == 0) sm.row_pos[r] += part;
    }
    __syncthreads();
    // The MMA operand dS is half precision: scale the tile by a power of two that puts its
    // largest |dS| near 2^14, so entries of order g/N² (a mean over a large batch) do not
    // flush to zero in fp16; the products are unscaled exactly in fp32.
    Acc inv_sigma = 1;
    if constexpr (kTensorCores<In>) inv_sigma = stage_half_ds(sm);
    // dA (owned) += dS · (r_b·B);  dB += dSᵀ · (r_a·A)  — D in BK chunks.
    for (int64_t d0 = 0; d0 < p.d; d0 += BK) {
      load_chunk<In, BN, BK, LDI>(sm.b, p.b, b0, p.nb, p.d, d0, p.rb);
      if constexpr (ATOMIC_B) load_chunk<In, BM, BK, LDI>(sm.a, p.a, a0, p.na, p.d, d0, p.ra);
      __syncthreads();
      grad_chunk<In, false, false>(sm, p.da, a0, p.na, p.d, d0, inv_sigma);
      if constexpr (ATOMIC_B) grad_chunk<In, true, true>(sm, p.db, b0, p.nb, p.d, d0, inv_sigma);
      __syncthreads();
    }
  }
  if (p.dscale != nullptr) {
    __syncthreads();
    for (int r = threadIdx.x; r < BM; r += kThreads)
      if (a0 + r < p.na) p.dscale[a0 + r] = sm.row_pos[r];
  }
}

}  // namespace

void norm_backward_cuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& g,
                        const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& diag, bool normalize, at::Tensor& dx) {
  const int64_t n = x.size(0), d = x.size(1);
  if (n == 0) return;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    launch(norm_backward_kernel<In>, row_grid(n), kThreads, stream, ptr<In>(x), ptr<Acc>(r),
           ptr<Acc>(g), scale ? ptr<Acc>(*scale) : nullptr, diag ? ptr<Acc>(*diag) : nullptr,
           mut_ptr<In>(dx), n, d, normalize);
  });
}

at::Tensor inverse_norms_cuda(const at::Tensor& x, bool normalize) {
  const int64_t n = x.size(0), d = x.size(1);
  auto opts = x.options().dtype(acc_type(x.scalar_type()));
  if (!normalize) return at::ones({n}, opts);
  at::Tensor r = output({n}, opts);
  if (n == 0) return r;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    launch(inv_norm_kernel<In>, row_grid(n), kThreads, stream, ptr<In>(x),
           mut_ptr<acc_t<In>>(r), n, d);
  });
  return r;
}

std::vector<at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& rq, const at::Tensor& rk,
                                     const at::Tensor& scale, const at::Tensor& row_key,
                                     const at::Tensor& col_key,
                                     const c10::optional<at::Tensor>& extra, bool mask_diag,
                                     bool need_col, int64_t programs) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  auto opts = q.options().dtype(acc_type(q.scalar_type()));
  at::Tensor lse = output({n}, opts), pos = output({n}, opts);
  at::Tensor clse = need_col ? output({m}, opts) : at::empty({0}, opts);
  if (n == 0) {
    if (need_col) clse.fill_(-std::numeric_limits<double>::infinity());
    return {lse, pos, clse};
  }
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    const int64_t row_blocks = (n + TileShape<In>::BM - 1) / TileShape<In>::BM;
    const int64_t grid = need_col ? std::max<int64_t>(1, std::min(programs, row_blocks))
                                  : row_blocks;
    at::Tensor col_m, col_l;
    if (need_col) {
      col_m = at::full({grid, m}, -std::numeric_limits<double>::infinity(), opts);
      col_l = at::zeros({grid, m}, opts);
    }
    FwdParams<In> p{ptr<In>(q), ptr<In>(k), ptr<Acc>(rq), ptr<Acc>(rk), ptr<Acc>(scale),
                    row_key.data_ptr<int64_t>(), col_key.data_ptr<int64_t>(),
                    extra ? ptr<Acc>(*extra) : nullptr, mut_ptr<Acc>(lse), mut_ptr<Acc>(pos),
                    need_col ? mut_ptr<Acc>(col_m) : nullptr,
                    need_col ? mut_ptr<Acc>(col_l) : nullptr, n, m, d, mask_diag, need_col};
    launch(fwd_kernel<In>, static_cast<unsigned>(grid), kThreads, stream, p);
    if (need_col && m > 0) {  // no columns: nothing to merge (a 0-block grid is invalid)
      launch(merge_col_kernel<Acc>, static_cast<unsigned>((m + 255) / 256), 256, stream,
             ptr<Acc>(col_m), ptr<Acc>(col_l), mut_ptr<Acc>(clse), grid, m);
    }
  });
  return {lse, pos, clse};
}

namespace {

template <typename In, bool TRANSPOSED, bool ATOMIC_B>
void launch_bwd(const BwdParams<In>& p, bool has_col, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((p.na + TileShape<In>::BM - 1) / TileShape<In>::BM);
  if (grid == 0) return;
  if (has_col) {
    launch(bwd_kernel<In, TRANSPOSED, ATOMIC_B, true>, grid, kThreads, stream, p);
  } else {
    launch(bwd_kernel<In, TRANSPOSED, ATOMIC_B, false>, grid, kThreads, stream, p);
  }
}

}  // namespace

std::vector<at::Tensor> backward_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& scale, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& lse,
                                      const at::Tensor& clse, const at::Tensor& g_lse,
                                      const at::Tensor& g_pos, const at::Tensor& g_clse,
                                      bool mask_diag, bool normalize, bool deterministic) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  auto opts = q.options().dtype(acc_type(q.scalar_type()));
  const bool has_col = clse.numel() > 0;
  at::Tensor dq_acc = at::zeros({n, d}, opts), dk_acc = at::zeros({m, d}, opts);
  at::Tensor dscale_rows = output({n}, opts);
  at::Tensor dq = output(q.sizes(), q.options()), dk = output(k.sizes(), k.options());
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    const Acc* cl = has_col ? ptr<Acc>(clse) : nullptr;
    const Acc* gc = has_col ? ptr<Acc>(g_clse) : nullptr;
    BwdParams<In> rows{ptr<In>(q), ptr<In>(k), ptr<Acc>(rq), ptr<Acc>(rk), ptr<Acc>(scale),
                       row_key.data_ptr<int64_t>(), col_key.data_ptr<int64_t>(),
                       ptr<Acc>(lse), ptr<Acc>(g_lse), ptr<Acc>(g_pos), cl, gc,
                       mut_ptr<Acc>(dq_acc), mut_ptr<Acc>(dk_acc), mut_ptr<Acc>(dscale_rows),
                       n, m, d, mask_diag};
    if (deterministic) {
      // Two passes, no atomics: dQ over row blocks, dK over column blocks.
      launch_bwd<In, false, false>(rows, has_col, stream);
      BwdParams<In> cols = rows;
      cols.a = ptr<In>(k);
      cols.b = ptr<In>(q);
      cols.ra = ptr<Acc>(rk);
      cols.rb = ptr<Acc>(rq);
      cols.da = mut_ptr<Acc>(dk_acc);
      cols.db = nullptr;
      cols.dscale = nullptr;
      cols.na = m;
      cols.nb = n;
      launch_bwd<In, true, false>(cols, has_col, stream);
    } else {
      launch_bwd<In, false, true>(rows, has_col, stream);
    }
  });
  norm_backward_cuda(q, rq, dq_acc, scale, c10::nullopt, normalize, dq);
  norm_backward_cuda(k, rk, dk_acc, scale, c10::nullopt, normalize, dk);
  if (n == 0) dscale_rows.zero_();
  return {dq, dk, dscale_rows.sum()};
}

}  // namespace ck_cuda
