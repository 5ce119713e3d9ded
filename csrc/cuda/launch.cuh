// One launch call for both builds: `launch<kernel>(grid, block, smem, stream, args...)` is
// `kernel<<<grid, block, smem, stream>>>(args...)` plus the launch-error check under nvcc
// (dynamic shared memory above the default 48 KB opted in first), and the CPU emulator's
// launch (csrc/emu: one OS thread per CUDA thread, blocks in order) in the emulation build,
// where the launch is recorded under the kernel's name for the traffic counters
// (memory.cuh) — so that the kernels and their launchers have one source.
#pragma once

#include <cstddef>
#include <string>
#include <utility>

#include "platform.h"

#if !defined(CK_CUDA_EMULATE)
#include <c10/cuda/CUDAException.h>
#endif

namespace ck_cuda {

#if defined(CK_CUDA_EMULATE)
// "bwd_kernel<__nv_bfloat16, false, true, false>": the template argument of kernel_name as
// g++ spells it, namespaces dropped.
inline std::string readable_kernel_name(const char* pretty) {
  std::string s(pretty);
  const auto at = s.find("K = ");
  if (at == std::string::npos) return s;
  s = s.substr(at + 4);
  const auto end = s.find_first_of(";]");
  if (end != std::string::npos) s = s.substr(0, end);
  if (!s.empty() && s[0] == '&') s = s.substr(1);
  for (const char* ns : {"ck_cuda::", "{anonymous}::", "(anonymous namespace)::"}) {
    for (auto p = s.find(ns); p != std::string::npos; p = s.find(ns)) s.erase(p, std::string(ns).size());
  }
  return s;
}
template <auto K>
const char* kernel_name() {
  static const std::string name = readable_kernel_name(__PRETTY_FUNCTION__);
  return name.c_str();
}
#endif

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream, Args&&... args) {
#if defined(CK_CUDA_EMULATE)
  ck_emu::launch_named(kernel_name<Kernel>(), Kernel, grid, block, smem, stream,
                       std::forward<Args>(args)...);
#else
  if (smem > 48 * 1024) {  // opt in (per device: set on the current one, every launch)
    C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  Kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace ck_cuda
