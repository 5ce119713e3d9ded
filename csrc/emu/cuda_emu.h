// cuda_emu.h — a CPU emulation of the CUDA execution model (header-only, C++20, g++).
//
// Force-include it before CUDA sources to compile them as host C++ and run their kernels on
// the CPU:
//     g++ -std=c++20 -x c++ -include csrc/emu/cuda_emu.h -I/usr/local/cuda/include k.cu
// and replace each kernel<<<grid, block, smem, stream>>>(args...) by
//     ck_emu::launch(kernel, grid, block, smem, stream, args...);
// (or ck_emu::launcher(kernel, grid, block, smem, stream)(args...)).
//
// What it provides (see emu_runtime.h and emu_wmma.h for the model and the details):
//   * qualifiers: __global__, __device__, __host__, __launch_bounds__(...), __constant__,
//     __managed__, __grid_constant__ expand to nothing (or `static`), __forceinline__ to
//     inline + always_inline; __restrict__ is GCC's own.
//   * __shared__ expands to `static`: one instance per kernel (per template instantiation),
//     shared by all threads of the running block. That is sound because blocks run one after
//     another and launches are serialized by a process-wide mutex. Consequences: the storage
//     is zero at program start and keeps its contents from block to block (a GPU gives
//     garbage; kernels must not rely on either); `extern __shared__ T a[];` cannot be written
//     — use ck_emu::dynamic_shared<T>() for the launch's dynamic shared memory.
//   * threadIdx, blockIdx, blockDim, gridDim (thread_local, uint3/dim3), warpSize.
//   * one fiber (ThreadSanitizer builds: one OS thread) per CUDA thread of a block;
//     __syncthreads(_count/_and/_or) as a real
//     block barrier, __syncwarp() as a warp barrier; barrier divergence and deadlocks are
//     detected and reported by ck_emu::launch.
//   * full-mask warp collectives: __shfl_sync, __shfl_up_sync, __shfl_down_sync,
//     __shfl_xor_sync (any trivially copyable type up to 16 bytes, with width),
//     __ballot_sync, __any_sync, __all_sync, __activemask.
//   * atomicAdd (int, unsigned, unsigned long long, float, double; returns the old value),
//     atomicSub/Exch/CAS/Min/Max/And/Or/Xor on integers, __threadfence*.
//   * CUDA's global math overloads: float overloads of the <cmath> functions in the global
//     namespace (exp(float) is expf, fma(float,...) is fmaf, as in CUDA), min/max for
//     integers and floating point, a few intrinsics (__expf, __fdividef, rsqrtf, __popc,
//     __float_as_int, ...).
//   * nvcuda::wmma (fragment, fill_fragment, load_matrix_sync, store_matrix_sync, mma_sync).
//   * the PTX-level intrinsics the kernels write as inline assembly (emu_ptx.h):
//     cp.async with commit/wait groups (asynchronous: visible only after the wait),
//     ldmatrix (.x1/.x2/.x4, .trans) and mma.sync m16n8k16 (f16/bf16 → f32) as warp
//     collectives with the PTX ISA's fragment layouts.
//   * traffic counters (ck_emu::count_load/store/atomic/flops, traffic_begin/end): the
//     kernels' global-memory bytes and tile-product FLOPs per launch.
//   * __half / __nv_bfloat16 / vector types / cudaStream_t from the CUDA toolkit's host-usable
//     headers when they are on the include path (CK_EMU_HAVE_CUDA_HEADERS == 1).
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h emulates CUDA for host compilers; do not use it under nvcc"
#endif

// Keep toolkit headers from declaring the real built-ins: device_launch_parameters.h declares
// `extern const uint3 threadIdx` (ours are thread_local definitions), crt/mma.h the real
// nvcuda::wmma (empty in host compilation today, but keep it out regardless).
#ifndef __DEVICE_LAUNCH_PARAMETERS_H__
#define __DEVICE_LAUNCH_PARAMETERS_H__
#endif
#ifndef __CUDA_MMA_H__
#define __CUDA_MMA_H__
#endif

#if !defined(CK_EMU_NO_CUDA_HEADERS) && __has_include(<cuda_fp16.h>) && __has_include(<vector_types.h>)
#define CK_EMU_HAVE_CUDA_HEADERS 1
// Included first so that crt/host_defines.h (include-guarded) cannot later redefine the
// qualifier macros below (it defines e.g. __shared__ only if it is not defined yet, but
// undefines and redefines __forceinline__).
#include <vector_types.h>
#include <driver_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#else
#define CK_EMU_HAVE_CUDA_HEADERS 0
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#endif

// <math.h> (libstdc++'s C++ wrapper) brings std's float overloads into the global namespace:
// exp(float) → expf, fma(float, float, float) → fmaf, abs(float), ... as CUDA device code
// has them. (<cmath> alone leaves only the double C functions there.)
#include <math.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <bit>

// ---- qualifiers ------------------------------------------------------------------------------
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __grid_constant__
#undef __forceinline__
#undef __launch_bounds__
#define __host__
#define __device__
#define __global__
#define __shared__ static
#define __constant__ static
#define __managed__
#define __grid_constant__
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#define CK_EMU 1

#include "emu_runtime.h"
#include "emu_wmma.h"
#include "emu_ptx.h"

// ---- CUDA's global math overloads ------------------------------------------------------------
// min/max: CUDA declares these (not std::) for device and host code.
#define CK_EMU_MINMAX(T)                              \
  inline T min(T a, T b) { return b < a ? b : a; }   \
  inline T max(T a, T b) { return a < b ? b : a; }
CK_EMU_MINMAX(int)
CK_EMU_MINMAX(unsigned int)
CK_EMU_MINMAX(long)
CK_EMU_MINMAX(unsigned long)
CK_EMU_MINMAX(long long)
CK_EMU_MINMAX(unsigned long long)
#undef CK_EMU_MINMAX
// Mixed signedness promotes to unsigned (CUDA's math_functions.hpp does the same).
inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }
inline unsigned long long min(long long a, unsigned long long b) { return min(static_cast<unsigned long long>(a), b); }
inline unsigned long long min(unsigned long long a, long long b) { return min(a, static_cast<unsigned long long>(b)); }
inline unsigned long long max(long long a, unsigned long long b) { return max(static_cast<unsigned long long>(a), b); }
inline unsigned long long max(unsigned long long a, long long b) { return max(a, static_cast<unsigned long long>(b)); }
// Floating point: fminf/fmaxf semantics (NaN-ignoring), like CUDA's min/max overloads.
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(static_cast<double>(a), b); }
inline double min(double a, float b) { return fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return fmax(a, static_cast<double>(b)); }
inline double max(float a, double b) { return fmax(static_cast<double>(a), b); }

// Fast-math and bit intrinsics (the exact host functions stand in for the approximate ones).
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float saturate(float x) { return __saturatef(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __popc(unsigned int x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
