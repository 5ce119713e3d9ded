// Python bindings of the CUDA engine: every input is checked here (device, dtype, shape,
// contiguity, each error naming the argument), then the kernels run on the current stream
// of the inputs' device under a device guard.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>

#include <vector>

namespace ck_cuda {

at::Tensor inverse_norms_cuda(const at::Tensor& x, bool normalize);
std::vector<at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& rq, const at::Tensor& rk,
                                     const at::Tensor& scale, const at::Tensor& row_key,
                                     const at::Tensor& col_key,
                                     const c10::optional<at::Tensor>& extra, bool mask_diag,
                                     bool need_col, int64_t programs);
std::vector<at::Tensor> backward_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& scale, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& lse,
                                      const at::Tensor& clse, const at::Tensor& g_lse,
                                      const at::Tensor& g_pos, const at::Tensor& g_clse,
                                      bool mask_diag, bool normalize, bool deterministic);

namespace {

at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D (rows, D), got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", t);
}

void check_pair(const at::Tensor& q, const at::Tensor& k) {
  check_features(q, "q");
  check_features(k, "k");
  TORCH_CHECK(q.device() == k.device(), "q and k must be on one device, got ", q.device(),
              " and ", k.device());
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k must share a dtype, got ",
              q.scalar_type(), " and ", k.scalar_type());
  TORCH_CHECK(q.size(1) == k.size(1), "q and k must share D, got ", q.size(1), " and ",
              k.size(1));
}

void check_vector(const at::Tensor& v, const char* name, int64_t n, at::ScalarType dtype,
                  const at::Device& device) {
  TORCH_CHECK(v.device() == device, name, " must be on ", device, ", got ", v.device());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, " must have shape (", n, "), got ",
              v.sizes());
  TORCH_CHECK(v.scalar_type() == dtype, name, " must be ", dtype, ", got ", v.scalar_type());
  TORCH_CHECK(v.is_contiguous(), name, " must be contiguous");
}

void check_scale(const at::Tensor& s, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(s.device() == device && s.numel() == 1, "scale must be a one-element tensor on ",
              device);
  TORCH_CHECK(s.scalar_type() == dtype, "scale must be ", dtype, ", got ", s.scalar_type());
}

void check_engine_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                         const at::Tensor& rk, const at::Tensor& scale,
                         const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag) {
  check_pair(q, k);
  const auto acc = acc_type(q.scalar_type());
  const auto dev = q.device();
  TORCH_CHECK(!mask_diag || q.size(0) == k.size(0), "mask_diag needs q and k with the same rows");
  check_vector(rq, "rq", q.size(0), acc, dev);
  check_vector(rk, "rk", k.size(0), acc, dev);
  check_scale(scale, acc, dev);
  check_vector(row_key, "row_key", q.size(0), at::kLong, dev);
  check_vector(col_key, "col_key", k.size(0), at::kLong, dev);
}

}  // namespace

at::Tensor inverse_norms(const at::Tensor& x, bool normalize) {
  check_features(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  return inverse_norms_cuda(x, normalize);
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                const at::Tensor& rk, const at::Tensor& scale,
                                const at::Tensor& row_key, const at::Tensor& col_key,
                                const c10::optional<at::Tensor>& extra, bool mask_diag,
                                bool need_col, int64_t programs) {
  check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag);
  if (extra) check_vector(*extra, "extra", q.size(0), acc_type(q.scalar_type()), q.device());
  TORCH_CHECK(programs > 0, "programs must be positive, got ", programs);
  const c10::cuda::CUDAGuard guard(q.device());
  return forward_cuda(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag, need_col,
                      programs);
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                 const at::Tensor& rk, const at::Tensor& scale,
                                 const at::Tensor& row_key, const at::Tensor& col_key,
                                 const at::Tensor& lse, const at::Tensor& clse,
                                 const at::Tensor& g_lse, const at::Tensor& g_pos,
                                 const at::Tensor& g_clse, bool mask_diag, bool normalize,
                                 bool deterministic) {
  check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag);
  const auto acc = acc_type(q.scalar_type());
  const auto dev = q.device();
  check_vector(lse, "lse", q.size(0), acc, dev);
  check_vector(g_lse, "g_lse", q.size(0), acc, dev);
  check_vector(g_pos, "g_pos", q.size(0), acc, dev);
  if (clse.numel() > 0) {
    check_vector(clse, "clse", k.size(0), acc, dev);
    check_vector(g_clse, "g_clse", k.size(0), acc, dev);
  }
  const c10::cuda::CUDAGuard guard(q.device());
  return backward_cuda(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
                       mask_diag, normalize, deterministic);
}

std::string built_archs() {
#ifdef CK_CUDA_ARCHS
  return CK_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace ck_cuda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "contrastive_kernels CUDA C++ engine (tensor-core MMA for half inputs)";
  m.def("inverse_norms", &ck_cuda::inverse_norms, "r (N,) = 1/max(||x_i||, eps), or ones");
  m.def("forward", &ck_cuda::forward, "(lse (N,), pos (N,), clse (M,) or empty)");
  m.def("backward", &ck_cuda::backward, "(dq (N,D), dk (M,D), dscale 0-dim)");
  m.def("built_archs", &ck_cuda::built_archs, "TORCH_CUDA_ARCH_LIST of this build");
}
