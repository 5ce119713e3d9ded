// Python bindings of the CUDA engine: every input is checked here (device, dtype, shape,
// contiguity, each error naming the argument), then the kernels run on the current stream
// of the inputs' device under a device guard.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "../engine_host.h"

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

at::Tensor inverse_norms(const at::Tensor& x, bool normalize) {
  ck::check_features(x, "x", c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  return inverse_norms_cuda(x, normalize);
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                const at::Tensor& rk, const at::Tensor& scale,
                                const at::Tensor& row_key, const at::Tensor& col_key,
                                const c10::optional<at::Tensor>& extra, bool mask_diag,
                                bool need_col, int64_t programs) {
  ck::check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag,
                          c10::DeviceType::CUDA);
  if (extra)
    ck::check_vector(*extra, "extra", q.size(0), ck::acc_type(q.scalar_type()), q.device());
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
  ck::check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag,
                          c10::DeviceType::CUDA);
  ck::check_backward_inputs(q, k, lse, clse, g_lse, g_pos, g_clse);
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
