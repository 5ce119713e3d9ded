// Tensor-core building blocks of the half-precision tile products: ldmatrix (shared memory →
// MMA fragments, plain or transposed) and mma.sync.m16n8k16 with fp32 accumulation, for
// __half and __nv_bfloat16 alike. Inline PTX under nvcc; the emulation build (csrc/emu,
// emu_ptx.h) implements the same instructions as warp collectives with the PTX ISA's
// documented fragment layouts, so the kernels' fragment bookkeeping is executed and tested
// without a GPU. Fragment layouts (g = lane/4, t = lane%4; two 16-bit elements per
// register, the lower index in the low half):
//   A (16×16, row): a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16×8, col):  b0 = B[2t..][g], b1 = B[2t+8..][g]
//   C/D (16×8 fp32): c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace ck_cuda {

// Four 8×8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i (16-byte aligned,
// shared memory); register i of lane l = matrix i's row l/4, columns 2(l%4), 2(l%4)+1.
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* row) {
#if defined(CK_CUDA_EMULATE)
  ::ck_emu::ldmatrix(r, 4, false, row);
#else
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

// The same with .trans: register i of lane l = matrix i's rows 2(l%4), 2(l%4)+1 of column l/4.
__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* row) {
#if defined(CK_CUDA_EMULATE)
  ::ck_emu::ldmatrix(r, 4, true, row);
#else
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

// d += a·b (m16n8k16, In = __half or __nv_bfloat16, fp32 accumulate).
template <typename In>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
  static_assert(std::is_same_v<In, __half> || std::is_same_v<In, __nv_bfloat16>);
#if defined(CK_CUDA_EMULATE)
  const unsigned b[2] = {b0, b1};
  ::ck_emu::mma_m16n8k16(d, a, b, d, std::is_same_v<In, __nv_bfloat16>);
#else
  if constexpr (std::is_same_v<In, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

}  // namespace ck_cuda
