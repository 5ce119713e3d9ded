// Tile machinery shared by the CUDA engines (softmax_engine_cuda.cu, pairwise_engine_cuda.cu):
// tile shapes, shared-memory layout, the operand loaders, the logit-tile product
// (wmma HMMA for half inputs, SIMT FMA for fp32/fp64), the gradient chunk products
// dS·Y / dSᵀ·Y, the power-of-two staging of a half-precision dS operand, and the host-side
// dtype dispatch. Only device functions and host helpers live here: each kernel is defined
// in exactly one .cu file, so every kernel name appears once in the built extension.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "../engine_host.h"
#include "../tile_math.h"

namespace ck_cuda {
namespace {
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename In>
struct TileShape {
  static constexpr int BM = 64, BN = 64, BK = 32;
};
template <>
struct TileShape<double> {
  static constexpr int BM = 32, BN = 32, BK = 32;
};

template <typename In>
using acc_t = std::conditional_t<std::is_same_v<In, double>, double, float>;

template <typename In>
constexpr bool kTensorCores = std::is_same_v<In, __half> || std::is_same_v<In, __nv_bfloat16>;

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename Acc, typename In>
__device__ __forceinline__ Acc load_acc(const In* p) {
  if constexpr (std::is_same_v<In, double>) {
    return *p;
  } else {
    return static_cast<Acc>(to_float(*p));
  }
}

template <typename In, typename Acc>
__device__ __forceinline__ In from_acc(Acc v) {
  if constexpr (std::is_same_v<In, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<In, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<In>(v);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Shared memory of one block. Operand chunks are [rows][BK + pad] in the input dtype; the
// logit tile is [BM][BN + pad] in the accumulation dtype (raw dots, then masked logits);
// dS is a separate input-dtype tile for the tensor-core path (the MMA operand), and lives
// in the logit tile itself on the SIMT path.
template <typename In>
struct Smem {
  using Acc = acc_t<In>;
  static constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN, BK = TileShape<In>::BK;
  static constexpr int kPadIn = 16 / sizeof(In) > 0 ? 16 / sizeof(In) : 1;  // 16 bytes
  static constexpr int LDI = BK + kPadIn;
  static constexpr int LDS = BN + 4;
  static constexpr int LDD = BN + kPadIn;
  alignas(32) In a[BM][LDI];
  alignas(32) In b[BN][LDI];
  alignas(32) Acc s[BM][LDS];
  alignas(32) In ds[kTensorCores<In> ? BM : 1][kTensorCores<In> ? LDD : 1];
  Acc row_m[BM], row_l[BM], row_pos[BM];
  float warp_max_abs[kWarps];
};

// Rows [r0, r0 + ROWS) × D-columns [d0, d0 + BK) of X into dst, zero outside (n, D), each
// row optionally multiplied by its factor (the inverse norm) in the accumulation dtype.
template <typename In, int ROWS, int BK, int LD>
__device__ __forceinline__ void load_chunk(In (*dst)[LD], const In* X, int64_t r0, int64_t n, int64_t D,
                           int64_t d0, const acc_t<In>* factor) {
  using Acc = acc_t<In>;
  for (int e = threadIdx.x; e < ROWS * BK; e += kThreads) {
    const int r = e / BK, c = e % BK;
    const int64_t row = r0 + r, col = d0 + c;
    In v = from_acc<In, Acc>(Acc(0));
    if (row < n && col < D) {
      v = X[row * D + col];
      if (factor != nullptr) v = from_acc<In, Acc>(load_acc<Acc>(&v) * factor[row]);
    }
    dst[r][c] = v;
  }
}

// sm.s = A[a0.., :] · B[b0.., :]ᵀ (raw dots over all of D), zero outside the matrices.
template <typename In>
__device__ __forceinline__ void tile_dots(Smem<In>& sm, const In* A, const In* B, int64_t a0, int64_t b0,
                          int64_t na, int64_t nb, int64_t D) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN, BK = Smem<In>::BK;
  constexpr int LDI = Smem<In>::LDI;
  if constexpr (kTensorCores<In>) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
    const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 2; ++y) wmma::fill_fragment(acc[x][y], 0.0f);
    for (int64_t d0 = 0; d0 < D; d0 += BK) {
      load_chunk<In, BM, BK, LDI>(sm.a, A, a0, na, D, d0, nullptr);
      load_chunk<In, BN, BK, LDI>(sm.b, B, b0, nb, D, d0, nullptr);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma::col_major> fb[2];
#pragma unroll
        for (int x = 0; x < 2; ++x) wmma::load_matrix_sync(fa[x], &sm.a[wr + 16 * x][kk], LDI);
#pragma unroll
        for (int y = 0; y < 2; ++y) wmma::load_matrix_sync(fb[y], &sm.b[wc + 16 * y][kk], LDI);
#pragma unroll
        for (int x = 0; x < 2; ++x)
#pragma unroll
          for (int y = 0; y < 2; ++y) wmma::mma_sync(acc[x][y], fa[x], fb[y], acc[x][y]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 2; ++y)
        wmma::store_matrix_sync(&sm.s[wr + 16 * x][wc + 16 * y], acc[x][y], Smem<In>::LDS,
                                wmma::mem_row_major);
  } else {
    // SIMT: thread (ty, tx) owns rows ty·TM.. and columns tx + 16·q (strided: no bank
    // conflicts on the B chunk).
    constexpr int TM = BM / 8, TN = BN / 16;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    Acc acc[TM][TN] = {};
    for (int64_t d0 = 0; d0 < D; d0 += BK) {
      load_chunk<In, BM, BK, LDI>(sm.a, A, a0, na, D, d0, nullptr);
      load_chunk<In, BN, BK, LDI>(sm.b, B, b0, nb, D, d0, nullptr);
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < BK; ++k) {
        Acc bv[TN];
#pragma unroll
        for (int q = 0; q < TN; ++q) bv[q] = load_acc<Acc>(&sm.b[tx + 16 * q][k]);
#pragma unroll
        for (int p = 0; p < TM; ++p) {
          const Acc av = load_acc<Acc>(&sm.a[ty * TM + p][k]);
#pragma unroll
          for (int q = 0; q < TN; ++q) acc[p][q] = fma(av, bv[q], acc[p][q]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int p = 0; p < TM; ++p)
#pragma unroll
      for (int q = 0; q < TN; ++q) sm.s[ty * TM + p][tx + 16 * q] = acc[p][q];
  }
  __syncthreads();
}

// C (BM×BK) += dS (BM×BN) · Y (BN×BK) for the owned side, or, with TRANS, the
// transposed product dSᵀ (BN×BM) · Y (BM×BK) for the other side; written straight into
// global rows out[row0 + r] (atomically when ATOMIC).
template <typename In, bool TRANS, bool ATOMIC>
__device__ __forceinline__ void grad_chunk(Smem<In>& sm, acc_t<In>* out, int64_t row0, int64_t nrows,
                           int64_t D, int64_t d0, acc_t<In> inv_sigma) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN, BK = Smem<In>::BK;
  static_assert(BM == BN, "the transposed product reuses the square tile");
  if constexpr (kTensorCores<In>) {
    using namespace nvcuda;
    // 4 warps × 16 rows × BK(32) columns; k over BN (or BM) in 16-steps.
    const int warp = threadIdx.x / 32;
    const int wr = warp * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    // Y is sm.b (the other side's chunk) for dA, sm.a (the owned chunk) for dB.
#pragma unroll
    for (int kk = 0; kk < BN; kk += 16) {
      if constexpr (TRANS) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma::col_major> fa;
        wmma::load_matrix_sync(fa, &sm.ds[kk][wr], Smem<In>::LDD);
#pragma unroll
        for (int y = 0; y < 2; ++y) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, &sm.a[kk][16 * y], Smem<In>::LDI);
          wmma::mma_sync(acc[y], fa, fb, acc[y]);
        }
      } else {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, &sm.ds[wr][kk], Smem<In>::LDD);
#pragma unroll
        for (int y = 0; y < 2; ++y) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, &sm.b[kk][16 * y], Smem<In>::LDI);
          wmma::mma_sync(acc[y], fa, fb, acc[y]);
        }
      }
    }
    // Stage through the logit tile (free once dS is formed): columns 0..31 for dA,
    // 32..63 for dB, so the two products of one chunk never overlap.
    constexpr int kStageCol = TRANS ? 32 : 0;
#pragma unroll
    for (int y = 0; y < 2; ++y)
      wmma::store_matrix_sync(&sm.s[wr][kStageCol + 16 * y], acc[y], Smem<In>::LDS,
                              wmma::mem_row_major);
    __syncwarp();
    for (int e = threadIdx.x % 32; e < 16 * BK; e += 32) {
      const int r = wr + e / BK, c = e % BK;
      const int64_t row = row0 + r, col = d0 + c;
      if (row < nrows && col < D) {
        const Acc v = sm.s[r][kStageCol + c] * inv_sigma;
        if constexpr (ATOMIC) {
          atomicAdd(&out[row * D + col], v);
        } else {
          out[row * D + col] += v;
        }
      }
    }
  } else {
    // SIMT, dS in sm.s (accumulation dtype): thread (ty, tx) owns rows ty·TM.. and the
    // D-columns tx + 16·q of the chunk.
    constexpr int TM = BM / 8, TN = BK / 16;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    Acc acc[TM][TN] = {};
    for (int k = 0; k < BN; ++k) {
      Acc yv[TN];
#pragma unroll
      for (int q = 0; q < TN; ++q)
        yv[q] = TRANS ? load_acc<Acc>(&sm.a[k][tx + 16 * q]) : load_acc<Acc>(&sm.b[k][tx + 16 * q]);
#pragma unroll
      for (int p = 0; p < TM; ++p) {
        const Acc x = TRANS ? sm.s[k][ty * TM + p] : sm.s[ty * TM + p][k];
#pragma unroll
        for (int q = 0; q < TN; ++q) acc[p][q] = fma(x, yv[q], acc[p][q]);
      }
    }
#pragma unroll
    for (int p = 0; p < TM; ++p) {
      const int64_t row = row0 + ty * TM + p;
#pragma unroll
      for (int q = 0; q < TN; ++q) {
        const int64_t col = d0 + tx + 16 * q;
        if (row < nrows && col < D) {
          if constexpr (ATOMIC) {
            atomicAdd(&out[row * D + col], acc[p][q]);
          } else {
            out[row * D + col] += acc[p][q];
          }
        }
      }
    }
  }
}

// sm.s (dS, fp32) → sm.ds (input half type) times σ = 2^e with σ·max|dS| ≤ 2^14; returns
// 1/σ. Called by all threads; ends synchronized.
template <typename In>
__device__ __forceinline__ float stage_half_ds(Smem<In>& sm) {
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float mx = 0;
  for (int e = threadIdx.x; e < BM * BN; e += kThreads) mx = fmaxf(mx, fabsf(sm.s[e / BN][e % BN]));
  mx = warp_max(mx);
  if (lane == 0) sm.warp_max_abs[warp] = mx;
  __syncthreads();
  mx = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm.warp_max_abs[w]);
  int e = 0;
  if (mx > 0.0f && mx < INFINITY) e = min(120, static_cast<int>(floorf(log2f(16384.0f / mx))));
  const float sigma = ldexpf(1.0f, e);
  for (int i = threadIdx.x; i < BM * BN; i += kThreads)
    sm.ds[i / BN][i % BN] = from_acc<In, float>(sm.s[i / BN][i % BN] * sigma);
  __syncthreads();
  return ldexpf(1.0f, -e);
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------
using ck::acc_type;
using ck::output;

int row_grid(int64_t n) { return static_cast<int>((n + kWarps - 1) / kWarps); }

template <typename Fn>
void dispatch_input(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: fn(float{}); break;
    case at::kDouble: fn(double{}); break;
    case at::kHalf: fn(__half{}); break;
    case at::kBFloat16: fn(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

template <typename In>
const In* ptr(const at::Tensor& t) {
  return reinterpret_cast<const In*>(t.data_ptr());
}
template <typename In>
In* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<In*>(t.data_ptr());
}

}  // namespace
}  // namespace ck_cuda
