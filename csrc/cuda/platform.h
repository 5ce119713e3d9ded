// The few host-side facts that differ between the real CUDA build and the CPU emulation
// build (CK_CUDA_EMULATE, csrc/emu): which device type the engine's tensors live on, the
// device guard and the current stream. Everything else, kernels included, is one source.
#pragma once

#include <ATen/ATen.h>

#if defined(CK_CUDA_EMULATE)
#include <driver_types.h>  // cudaStream_t (the emulator runs launches synchronously)
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ck_cuda {

#if defined(CK_CUDA_EMULATE)
// The emulated engine takes CPU tensors, exactly as the Triton interpreter does.
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
#else
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

}  // namespace ck_cuda
