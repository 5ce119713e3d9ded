// Python bindings of the CUDA engine: every input is checked here (device, dtype, shape,
// contiguity, each error naming the argument), then the kernels run on the current stream
// of the inputs' device under a device guard. The emulation build (csrc/emu) compiles this
// same file: there the tensors are CPU tensors and the guard does nothing (platform.h).
#include <torch/extension.h>

#include <vector>

#include "../engine_host.h"
#include "engine_cuda.h"
#include "platform.h"

namespace ck_cuda {

at::Tensor inverse_norms(const at::Tensor& x, bool normalize) {
  ck::check_features(x, "x", kDeviceType);
  const DeviceGuard guard(x.device());
  return inverse_norms_cuda(x, normalize);
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                const at::Tensor& rk, const at::Tensor& scale,
                                const at::Tensor& row_key, const at::Tensor& col_key,
                                const c10::optional<at::Tensor>& extra, bool mask_diag,
                                bool need_col, int64_t programs,
                                const c10::optional<at::Tensor>& xmul) {
  ck::check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag,
                          kDeviceType);
  if (extra)
    ck::check_vector(*extra, "extra", q.size(0), ck::acc_type(q.scalar_type()), q.device());
  ck::check_xmul(xmul, q);
  TORCH_CHECK(programs > 0, "programs must be positive, got ", programs);
  const DeviceGuard guard(q.device());
  return forward_cuda(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag, need_col,
                      programs, xmul);
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                 const at::Tensor& rk, const at::Tensor& scale,
                                 const at::Tensor& row_key, const at::Tensor& col_key,
                                 const at::Tensor& lse, const at::Tensor& clse,
                                 const at::Tensor& g_lse, const at::Tensor& g_pos,
                                 const at::Tensor& g_clse, bool mask_diag, bool normalize,
                                 bool deterministic, bool need_dq, bool need_dk,
                                 const c10::optional<at::Tensor>& xmul,
                                 const c10::optional<at::Tensor>& xlse,
                                 const c10::optional<at::Tensor>& g_xlse) {
  ck::check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag,
                          kDeviceType);
  ck::check_backward_inputs(q, k, lse, clse, g_lse, g_pos, g_clse);
  ck::check_extra_backward(q, xmul, xlse, g_xlse);
  const DeviceGuard guard(q.device());
  return backward_cuda(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
                       mask_diag, normalize, deterministic, need_dq, need_dk, xmul, xlse,
                       g_xlse);
}

// --- pairwise engine ---------------------------------------------------------------------
// The arguments pair_forward and pair_backward share: kind, q, k, rq, rk, params (3,) =
// [scale, bias, margin] on the device in the accumulation dtype, row_key, col_key.
void check_pair_inputs(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& params,
                       const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag) {
  TORCH_CHECK(kind == 0 || kind == 1, "kind must be 0 (SIGLIP) or 1 (HADSELL), got ", kind);
  ck::check_features(q, "q", kDeviceType);
  ck::check_vector(params, "params", 3, ck::acc_type(q.scalar_type()), q.device());
  // The shared checks take a one-element scale: params[0] (already validated above).
  ck::check_engine_inputs(q, k, rq, rk, params.narrow(0, 0, 1), row_key, col_key, mask_diag,
                          kDeviceType);
}

at::Tensor pair_forward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& params,
                        const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag) {
  check_pair_inputs(kind, q, k, rq, rk, params, row_key, col_key, mask_diag);
  const DeviceGuard guard(q.device());
  return pair_forward_cuda(kind, q, k, rq, rk, params, row_key, col_key, mask_diag);
}

std::vector<at::Tensor> pair_backward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& params, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& g_row,
                                      bool mask_diag, bool normalize, bool want_rows,
                                      bool deterministic, bool need_dq, bool need_dk) {
  check_pair_inputs(kind, q, k, rq, rk, params, row_key, col_key, mask_diag);
  ck::check_vector(g_row, "g_row", q.size(0), ck::acc_type(q.scalar_type()), q.device());
  const DeviceGuard guard(q.device());
  return pair_backward_cuda(kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag,
                            normalize, want_rows, deterministic, need_dq, need_dk);
}

std::vector<at::Tensor> hardest_pairs(const at::Tensor& x, const at::Tensor& rx,
                                      const at::Tensor& key) {
  ck::check_features(x, "x", kDeviceType);
  ck::check_vector(rx, "rx", x.size(0), ck::acc_type(x.scalar_type()), x.device());
  ck::check_vector(key, "key", x.size(0), at::kLong, x.device());
  const DeviceGuard guard(x.device());
  return hardest_pairs_cuda(x, rx, key);
}

at::Tensor distance_strip(const at::Tensor& x, const at::Tensor& nsq, int64_t row0,
                          int64_t rows) {
  ck::check_features(x, "x", kDeviceType);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64 (prepared rows), got ", x.scalar_type());
  ck::check_vector(nsq, "nsq", x.size(0), x.scalar_type(), x.device());
  TORCH_CHECK(row0 >= 0 && rows >= 0 && row0 + rows <= x.size(0), "rows [", row0, ", ",
              row0 + rows, ") out of range for ", x.size(0), " rows of x");
  const DeviceGuard guard(x.device());
  return distance_strip_cuda(x, nsq, row0, rows);
}

#if defined(CK_CUDA_EMULATE)
// The emulation build's traffic counters (csrc/cuda/memory.cuh, ck_emu::traffic_*), read by
// contrastive_kernels/proof/cuda_traffic.py: traffic_begin() -> token; traffic_end(token) ->
// one dict per kernel launch since then.
pybind11::list traffic_end(std::size_t token) {
  pybind11::list out;
  for (const ck_emu::LaunchRecord& r : ck_emu::traffic_end(token)) {
    pybind11::dict d;
    d["kernel"] = r.kernel;
    d["programs"] = r.programs;
    d["bytes_loaded"] = r.traffic.loaded;
    d["bytes_stored"] = r.traffic.stored;
    d["bytes_atomic"] = r.traffic.atomic;
    d["flops"] = r.traffic.flops;
    d["num_warps"] = r.num_warps;
    out.append(d);
  }
  return out;
}
#endif

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
  namespace py = pybind11;
  m.def("forward", &ck_cuda::forward,
        "(lse (N,), pos (N,), clse (M,) or empty, xlse (T,N): the log-sum-exps over each "
        "row's negatives of xmul[t]·S, (0,N) without xmul)",
        py::arg("q"), py::arg("k"), py::arg("rq"), py::arg("rk"), py::arg("scale"),
        py::arg("row_key"), py::arg("col_key"), py::arg("extra"), py::arg("mask_diag"),
        py::arg("need_col"), py::arg("programs"), py::arg("xmul") = py::none());
  m.def("backward", &ck_cuda::backward,
        "(dq (N,D), dk (M,D), dscale 0-dim); a gradient not needed (need_dq/need_dk) is (0,D); "
        "xmul (T,), xlse (T,N), g_xlse (T,N): the extra log-sum-exps' terms (None without)",
        py::arg("q"), py::arg("k"), py::arg("rq"), py::arg("rk"), py::arg("scale"),
        py::arg("row_key"), py::arg("col_key"), py::arg("lse"), py::arg("clse"),
        py::arg("g_lse"), py::arg("g_pos"), py::arg("g_clse"), py::arg("mask_diag"),
        py::arg("normalize"), py::arg("deterministic"), py::arg("need_dq") = true,
        py::arg("need_dk") = true, py::arg("xmul") = py::none(), py::arg("xlse") = py::none(),
        py::arg("g_xlse") = py::none());
  m.def("pair_forward", &ck_cuda::pair_forward, "rows (N,) of the pairwise engine");
  m.def("pair_backward", &ck_cuda::pair_backward,
        "(rows (N,) or empty, dq (N,D), dk (M,D), dparams (3,) = [dscale, dbias, dmargin]); "
        "a gradient not needed (need_dq/need_dk) is (0,D)",
        py::arg("kind"), py::arg("q"), py::arg("k"), py::arg("rq"), py::arg("rk"),
        py::arg("params"), py::arg("row_key"), py::arg("col_key"), py::arg("g_row"),
        py::arg("mask_diag"), py::arg("normalize"), py::arg("want_rows"),
        py::arg("deterministic"), py::arg("need_dq") = true, py::arg("need_dk") = true);
  m.def("distance_strip", &ck_cuda::distance_strip,
        "(rows, N) squared distances of rows [row0, row0 + rows) of x to every row");
  m.def("hardest_pairs", &ck_cuda::hardest_pairs, "(pos (N,), neg (N,)) int64, -1 where none");
  m.def("built_archs", &ck_cuda::built_archs, "TORCH_CUDA_ARCH_LIST of this build");
#if defined(CK_CUDA_EMULATE)
  m.def("traffic_begin", &ck_emu::traffic_begin,
        "start recording one traffic record per kernel launch; returns a token");
  m.def("traffic_end", &ck_cuda::traffic_end, pybind11::arg("token"),
        "the launches since traffic_begin(token): [{kernel, programs, bytes_loaded, "
        "bytes_stored, bytes_atomic, flops, num_warps}]");
#endif
}
