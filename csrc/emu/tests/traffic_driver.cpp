// Traffic counts of the emulated engine outside Python: runs the softmax-family forward and
// backward on a fixed small fp32 problem and prints one JSON line per kernel launch (the
// fields of contrastive_kernels/proof/cuda_traffic.py). tests/test_cuda_traffic.py compiles it
// together with csrc/cuda/softmax_engine_cuda.cu — the original and a copy with one global
// load no longer going through the counted helper — to show that the exact checks of the
// counts catch a planted miscount:
//   g++ -std=c++20 -DCK_CUDA_EMULATE -include csrc/emu/cuda_emu.h -I csrc -I <cuda>/include
//       -I <torch>/include traffic_driver.cpp -ltorch -ltorch_cpu -lc10
// (the engine source comes in through the include below; put a mutated copy's folder first
// on the include path to use it).
#include "softmax_engine_cuda.cu"

#include <cstdio>

int main() {
  const int64_t n = 70, m = 45, d = 40;
  at::manual_seed(7);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor q = at::randn({n, d}, f32), k = at::randn({m, d}, f32);
  const at::Tensor row_key = at::arange(n, at::kLong) % 5, col_key = at::arange(m, at::kLong) % 5;
  const at::Tensor scale = at::full({}, 10.0, f32);
  const at::Tensor rq = ck_cuda::inverse_norms_cuda(q, true), rk = ck_cuda::inverse_norms_cuda(k, true);
  const std::size_t token = ck_emu::traffic_begin();
  auto fwd = ck_cuda::forward_cuda(q, k, rq, rk, scale, row_key, col_key, c10::nullopt, false,
                                   false, 1);
  const at::Tensor g = at::randn({n}, f32), e = at::empty({0}, f32);
  ck_cuda::backward_cuda(q, k, rq, rk, scale, row_key, col_key, fwd[0], e, g, g, e, false, true,
                         false);
  for (const ck_emu::LaunchRecord& r : ck_emu::traffic_end(token)) {
    std::printf(
        "{\"kernel\": \"%s\", \"programs\": %llu, \"bytes_loaded\": %llu, \"bytes_stored\": %llu, "
        "\"bytes_atomic\": %llu, \"flops\": %llu, \"num_warps\": %u}\n",
        r.kernel.c_str(), r.programs, r.traffic.loaded, r.traffic.stored, r.traffic.atomic,
        r.traffic.flops, r.num_warps);
  }
  return 0;
}
