// Host-side pieces both C++ engines share: the accumulation dtype, poisoned outputs, and
// the argument checks of the engine interface (each error names the argument), including
// the optional extra log-sum-exps (xmul, xlse, g_xlse). The CPU engine checks with device
// type CPU, the CUDA bindings with CUDA.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdlib>
#include <limits>
#include <string>

#include "tile_math.h"

namespace ck {

// fp64 for fp64 inputs, fp32 for everything else.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool poison_outputs() {
  const char* v = std::getenv("CONTRASTIVE_KERNELS_POISON");
  return v != nullptr && std::string(v) == "1";
}

// An output every element of which the engine must write (NaN-filled under the test
// suite's CONTRASTIVE_KERNELS_POISON=1, so an unwritten element cannot pass).
// Integer outputs (indices) are poisoned with INT64_MIN, which no valid index or "none"
// marker (-1) equals and which any indexing with it rejects.
inline at::Tensor output(at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (!poison_outputs()) return at::empty(shape, opts);
  if (at::isIntegralType(opts.dtype().toScalarType(), /*includeBool=*/false))
    return at::full(shape, std::numeric_limits<int64_t>::min(), opts);
  return at::full(shape, std::numeric_limits<double>::quiet_NaN(), opts);
}

inline void check_features(const at::Tensor& x, const char* name, c10::DeviceType device) {
  TORCH_CHECK(x.device().type() == device, name, " must be a ", c10::DeviceTypeName(device),
              " tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D (rows, D), got ", x.dim(), "-D");
  // Zero rows (N = 0 or M = 0) are handled by every entry point; a zero width is not a
  // feature vector (and BLAS rejects its leading dimension), so it is refused here.
  TORCH_CHECK(x.size(1) > 0, name, " must have at least one feature column (D >= 1), got D = ",
              x.size(1));
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", t);
}

inline void check_vector(const at::Tensor& v, const char* name, int64_t n, at::ScalarType dtype,
                         const at::Device& device) {
  TORCH_CHECK(v.device() == device, name, " must be on ", device, ", got ", v.device());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, " must have shape (", n, "), got ",
              v.sizes());
  TORCH_CHECK(v.scalar_type() == dtype, name, " must be ", dtype, ", got ", v.scalar_type());
  TORCH_CHECK(v.is_contiguous(), name, " must be contiguous");
}

inline void check_scale(const at::Tensor& s, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(s.device() == device && s.numel() == 1, "scale must be a one-element tensor on ",
              device);
  TORCH_CHECK(s.scalar_type() == dtype, "scale must be ", dtype, ", got ", s.scalar_type());
}

// The arguments forward and backward share: q (N,D), k (M,D), their inverse norms, the
// scale and the integer keys.
inline void check_engine_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                const at::Tensor& rk, const at::Tensor& scale,
                                const at::Tensor& row_key, const at::Tensor& col_key,
                                bool mask_diag, c10::DeviceType device) {
  check_features(q, "q", device);
  check_features(k, "k", device);
  TORCH_CHECK(q.device() == k.device(), "q and k must be on one device, got ", q.device(),
              " and ", k.device());
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k must share a dtype, got ",
              q.scalar_type(), " and ", k.scalar_type());
  TORCH_CHECK(q.size(1) == k.size(1), "q and k must share D, got ", q.size(1), " and ",
              k.size(1));
  // mask_diag leaves out j == i: the first N rows of k are q's own rows (M ≥ N; the
  // distributed losses put a rank's own rows first among the global candidates).
  TORCH_CHECK(!mask_diag || q.size(0) <= k.size(0),
              "mask_diag needs k to start with q's rows (M >= N), got N = ", q.size(0),
              " and M = ", k.size(0));
  const auto acc = acc_type(q.scalar_type());
  const auto dev = q.device();
  check_vector(rq, "rq", q.size(0), acc, dev);
  check_vector(rk, "rk", k.size(0), acc, dev);
  check_scale(scale, acc, dev);
  check_vector(row_key, "row_key", q.size(0), at::kLong, dev);
  check_vector(col_key, "col_key", k.size(0), at::kLong, dev);
}

// The saved statistics and upstream gradients a backward receives.
inline void check_backward_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& lse,
                                  const at::Tensor& clse, const at::Tensor& g_lse,
                                  const at::Tensor& g_pos, const at::Tensor& g_clse) {
  const auto acc = acc_type(q.scalar_type());
  const auto dev = q.device();
  check_vector(lse, "lse", q.size(0), acc, dev);
  check_vector(g_lse, "g_lse", q.size(0), acc, dev);
  check_vector(g_pos, "g_pos", q.size(0), acc, dev);
  if (clse.numel() > 0) {
    check_vector(clse, "clse", k.size(0), acc, dev);
    check_vector(g_clse, "g_clse", k.size(0), acc, dev);
  }
}

// The extra log-sum-exps' multipliers (forward and backward): xmul (T,) in the
// accumulation dtype on q's device, 1 ≤ T ≤ kMaxExtraLse. Returns T (0 without xmul).
inline int64_t check_xmul(const c10::optional<at::Tensor>& xmul, const at::Tensor& q) {
  if (!xmul) return 0;
  const int64_t t = xmul->dim() == 1 ? xmul->size(0) : -1;
  TORCH_CHECK(t >= 1 && t <= kMaxExtraLse, "xmul must have shape (T,) with 1 <= T <= ",
              kMaxExtraLse, " (the engine's kMaxExtraLse), got ", xmul->sizes());
  check_vector(*xmul, "xmul", t, acc_type(q.scalar_type()), q.device());
  return t;
}

// A (rows, n) statistic or gradient of the extra log-sum-exps: given when rows > 0 (None or
// (0, n) allowed when there are none, as forward returns for xmul = None).
inline void check_extra_rows(const c10::optional<at::Tensor>& v, const char* name, int64_t rows,
                             int64_t n, at::ScalarType dtype, const at::Device& device) {
  if (!v) {
    TORCH_CHECK(rows == 0, name, " is required when xmul is given (shape (", rows, ", ", n,
                "))");
    return;
  }
  TORCH_CHECK(v->device() == device, name, " must be on ", device, ", got ", v->device());
  TORCH_CHECK(v->dim() == 2 && v->size(0) == rows && v->size(1) == n, name,
              " must have shape (", rows, ", ", n, ") (T = xmul's length), got ", v->sizes());
  TORCH_CHECK(v->scalar_type() == dtype, name, " must be ", dtype, ", got ", v->scalar_type());
  TORCH_CHECK(v->is_contiguous(), name, " must be contiguous");
}

// The backward's extra log-sum-exp inputs: xmul (T,), their forward values xlse (T, N) and
// upstream gradients g_xlse (T, N). Returns T.
inline int64_t check_extra_backward(const at::Tensor& q, const c10::optional<at::Tensor>& xmul,
                                    const c10::optional<at::Tensor>& xlse,
                                    const c10::optional<at::Tensor>& g_xlse) {
  const int64_t t = check_xmul(xmul, q);
  const auto acc = acc_type(q.scalar_type());
  check_extra_rows(xlse, "xlse", t, q.size(0), acc, q.device());
  check_extra_rows(g_xlse, "g_xlse", t, q.size(0), acc, q.device());
  return t;
}

}  // namespace ck
