// One launch call for both builds: `launch(kernel, grid, block, stream, args...)` is
// `kernel<<<grid, block, 0, stream>>>(args...)` plus the launch-error check under nvcc, and
// the CPU emulator's launch (csrc/emu: one OS thread per CUDA thread, blocks in order) in
// the emulation build, so that the kernels and their launchers have one source.
#pragma once

#include <utility>

#include "platform.h"

#if !defined(CK_CUDA_EMULATE)
#include <c10/cuda/CUDAException.h>
#endif

namespace ck_cuda {

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
            Args&&... args) {
#if defined(CK_CUDA_EMULATE)
  ck_emu::launch(kernel, grid, block, 0, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace ck_cuda
