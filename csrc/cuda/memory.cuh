// The kernels' global-memory accesses and tile-product FLOPs go through these helpers, so that
// the CPU emulation build (csrc/emu, CK_CUDA_EMULATE) can count them per launch
// (contrastive_kernels/proof/cuda_traffic.py: bytes loaded / stored / atomically added as the
// kernel code requests them, every thread's access counted; 2·M·N·K FLOPs per tile product).
// Under nvcc the counters are empty and each helper is the plain access it wraps: the same
// instructions as writing the access out.
#pragma once

#include <cstddef>

#if defined(CK_CUDA_EMULATE)
#define CK_COUNT_LOAD(bytes) ::ck_emu::count_load(bytes)
#define CK_COUNT_STORE(bytes) ::ck_emu::count_store(bytes)
#define CK_COUNT_ATOMIC(bytes) ::ck_emu::count_atomic(bytes)
#define CK_COUNT_FLOPS(n) ::ck_emu::count_flops(n)
#else
#define CK_COUNT_LOAD(bytes) ((void)0)
#define CK_COUNT_STORE(bytes) ((void)0)
#define CK_COUNT_ATOMIC(bytes) ((void)0)
#define CK_COUNT_FLOPS(n) ((void)0)
#endif

namespace ck_cuda {

// v = *p from global memory.
template <typename T>
__device__ __forceinline__ T gload(const T* p) {
  CK_COUNT_LOAD(sizeof(T));
  return *p;
}

// *p = v to global memory.
template <typename T>
__device__ __forceinline__ void gstore(T* p, T v) {
  CK_COUNT_STORE(sizeof(T));
  *p = v;
}

// atomicAdd(p, v) on global memory (the old value is not used: RED on the GPU).
template <typename T>
__device__ __forceinline__ void gatomic_add(T* p, T v) {
  CK_COUNT_ATOMIC(sizeof(T));
  atomicAdd(p, v);
}

// Asynchronous copy of BYTES (4, 8 or 16) from global to shared memory, zero-filled when not
// `valid` (src is then not read: pass any address). PTX cp.async (sm_80+): .cg for 16 bytes
// (bypasses L1), .ca otherwise. Visible to the issuing thread after cp_async_wait<n>() has
// completed its group, to the block after a barrier that follows the wait.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src, bool valid) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  if (valid) CK_COUNT_LOAD(BYTES);
#if defined(CK_CUDA_EMULATE)
  ::ck_emu::cp_async(smem_dst, gmem_src, BYTES, valid ? BYTES : 0);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
                 "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem_src),
                 "n"(BYTES), "r"(src_bytes));
  }
#endif
}

// Closes the calling thread's group of cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(CK_CUDA_EMULATE)
  ::ck_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of the calling thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(CK_CUDA_EMULATE)
  ::ck_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// cp_async_wait<n>() for a run-time n (the chunks still allowed in flight), 0 <= n; n > 7 waits
// as 7 (a panel has at most 8 chunks).
__device__ __forceinline__ void cp_async_wait_dyn(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
  }
}

// FLOPs of a tile product executed by the calling thread (SIMT FMAs: 2 each) or warp (MMA:
// counted once per warp, by lane 0, 2·m·n·k per instruction).
__device__ __forceinline__ void count_flops(unsigned long long n) {
  CK_COUNT_FLOPS(n);
  (void)n;
}

}  // namespace ck_cuda
