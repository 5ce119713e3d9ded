// Tile machinery shared by the CUDA engines (softmax_engine_cuda.cu, pairwise_engine_cuda.cu).
//
// A block owns BM rows of one side ("a": the rows of S, or its columns in a transposed pass)
// and visits column tiles of BN rows of the other side ("b"): 128 × 64 with 8 warps for the
// half types, 64 × 64 with 4 warps for fp32, 32 × 32 for fp64 (TileShape). Its operands live
// in shared memory as panels of P ≤ 256 feature columns (P = D rounded up to 32 when that
// fits, else D is split into equal panels):
//   a panel  [BM][P + pad]   loaded once per block (when D fits one panel), stays on chip;
//   b panel  [BN][P + pad]   one per column tile, streamed once: issued with cp.async in
//                            32-column chunks (one commit group each) so the logit product
//                            starts on chunk 0 while the rest land, and the next tile's
//                            panel is issued as soon as this one is dead (prefetch);
//   S        [BM][BN + pad]  the logit tile (accumulation dtype), then dS;
//   dS       [BM][BN + 8]    half precision, the MMA operand of the gradient products;
//   dA group [BM][P + pad]   (backward, SIMT) the owned gradient rows, accumulated on chip;
//                            the half types keep them in registers instead (GradGroup);
//   vectors                  per-row / per-column operands of the tile (inverse norms, keys,
//                            saved statistics), loaded once per block / per tile;
//   extra vectors            (softmax, only with extra log-sum-exps) xvecs more per-row
//                            vectors for their statistics, sized at launch (Layout::xvecs),
//                            so that a launch without them pays no shared memory.
// Half inputs use mma.sync m16n8k16 fed by ldmatrix (mma.cuh); fp32/fp64 use SIMT FMA with
// +1-word padded rows, so neither the operand reads nor the S / dA accesses have bank
// conflicts (row strides ≡ 1 mod 32 words; 16-byte rows ≡ 16 mod 128 bytes for ldmatrix).
//
// The grid is (row blocks, column splits, panels): when the row blocks alone cannot fill the
// GPU (sm count × blocks per SM from the occupancy), the column tiles are split into ranges,
// each block merging partial row statistics (softmax: (max, sum, pos); pairwise: sums) that
// a small kernel combines, and adding its gradient rows with one atomic per element (or, in
// the deterministic mode, into per-split partial rows summed in a fixed order). Blocks start
// at a staggered tile of their range, so blocks of one split do not hit the same columns'
// atomics at the same time. Sums over many tiles are blocked (kGroup tiles into an on-chip
// group, groups into the total), as the CPU engine's BlockSum, so a 1M-key queue keeps fp32
// accuracy.
//
// Only device functions, the shared-memory layout and host helpers live here: each kernel is
// defined in exactly one .cu file, so every kernel name appears once in the built extension.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../engine_host.h"
#include "../tile_math.h"
#include "memory.cuh"
#include "mma.cuh"

#if !defined(CK_CUDA_EMULATE)
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#endif

// The launch's dynamic shared memory as `unsigned char name[]`, 128-byte aligned.
#if defined(CK_CUDA_EMULATE)
#define CK_DYNAMIC_SMEM(name) unsigned char* name = ::ck_emu::dynamic_shared<unsigned char>()
#else
#define CK_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace ck_cuda {
namespace {
constexpr int kThreads = 128;  // the row-wise kernels' blocks
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;      // feature columns per cp.async group and per gradient block
constexpr int kMaxPanel = 256;  // feature columns a panel holds at most
constexpr int kGroup = 32;      // two-level sums: tiles per on-chip group
constexpr int kMaxTileWarps = 8;

template <typename In>
constexpr bool kTensorCores = std::is_same_v<In, __half> || std::is_same_v<In, __nv_bfloat16>;

// Tile kernels' blocks: 8 warps for the tensor-core path (each warp owns 16 of 128 rows and
// keeps their gradient panel in registers, see GradGroup), 4 for SIMT.
template <typename In>
constexpr int kTileThreads = kTensorCores<In> ? 256 : 128;
template <typename In>
constexpr int kTileWarps = kTileThreads<In> / 32;

// Owned rows (BM) against streamed rows (BN) per tile. A program owning R rows against C
// streamed ones moves about 6·D·(R + C) bytes for 6·R·C·D FLOPs in the backward, so R bounds
// its FLOP per byte: 128 rows for the half types.
template <typename In>
struct TileShape {
  static constexpr int BM = kTensorCores<In> ? 128 : 64, BN = 64;
};
template <>
struct TileShape<double> {
  static constexpr int BM = 32, BN = 32;
};

template <typename In>
using acc_t = std::conditional_t<std::is_same_v<In, double>, double, float>;

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

// load_acc of a global element (counted by the emulation build's traffic counters).
template <typename Acc, typename In>
__device__ __forceinline__ Acc gload_acc(const In* p) {
  const In v = gload(p);
  return load_acc<Acc>(&v);
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

// ---------------------------------------------------------------------------------------
// Shared-memory layout (host and device)
// ---------------------------------------------------------------------------------------
// Per-row and per-column operands of the current tile, and the blocked running statistics of
// the owned rows (level 2: tot*, the open group: grp*). The kernels name the slots.
template <typename In>
struct Vectors {
  using Acc = acc_t<In>;
  static constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  Acc ra[BM], rb[BN];      // inverse norms (or 1) of the owned rows / the tile's columns
  int64_t ka[BM], kb[BN];  // keys
  Acc va[3][BM];           // per owned row: saved statistics / upstream gradients
  Acc vb[3][BN];           // per tile column
  Acc tot[3][BM];          // blocked sums, level 2
  Acc grp[3][BM];          // blocked sums, the open group
  Acc scalar[4];           // scale (and friends), read once per block
  float red[kMaxTileWarps];  // block reductions
};

__host__ __device__ constexpr size_t align128(size_t b) { return (b + 127) / 128 * 128; }

template <typename In>
struct Layout {
  using Acc = acc_t<In>;
  static constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  static constexpr bool kMma = kTensorCores<In>;
  // Operand rows: +8 halves (16-byte rows at stride ≡ 16 mod 128 bytes: the 8 rows of an
  // ldmatrix phase hit distinct bank groups), +1 word for fp32 (stride ≡ 1 mod 32 words:
  // the SIMT product's column reads are conflict-free), +1 element for fp64.
  static constexpr int kPadIn = kMma ? 8 : 1;
  static constexpr int LDS = kMma ? BN + 4 : BN + 1;  // logit tile
  static constexpr int LDD = BN + 8;                  // half dS tile (ldmatrix rows)
  // Extra per-row vectors (kXRows entries each) after Vectors: the softmax engine's extra
  // log-sum-exps' running sums (forward) or saved statistics (backward); 0 without them.
  static constexpr int kXRows = BM > BN ? BM : BN;
  int panel;  // P, a multiple of kChunk
  bool grad;  // backward: dS tile and (SIMT) the dA group accumulator; MMA keeps it in
              // registers (GradGroup)
  int xvecs = 0;

  __host__ __device__ int ldi() const { return panel + kPadIn; }
  // dA group: fp32 fragments stored as float2 at stride ≡ 8 mod 32 words (conflict-free).
  __host__ __device__ int ldg() const { return kMma ? panel + 8 : panel + 1; }
  __host__ __device__ size_t off_b() const { return align128(size_t(BM) * ldi() * sizeof(In)); }
  __host__ __device__ size_t off_s() const {
    return off_b() + align128(size_t(BN) * ldi() * sizeof(In));
  }
  __host__ __device__ size_t off_ds() const { return off_s() + align128(size_t(BM) * LDS * sizeof(Acc)); }
  __host__ __device__ size_t off_g() const {
    return off_ds() + (grad && kMma ? align128(size_t(BM) * LDD * sizeof(In)) : 0);
  }
  __host__ __device__ size_t off_v() const {
    return off_g() + (grad && !kMma ? align128(size_t(BM) * ldg() * sizeof(Acc)) : 0);
  }
  __host__ __device__ size_t off_x() const { return off_v() + align128(sizeof(Vectors<In>)); }
  __host__ __device__ size_t bytes() const {
    return off_x() + align128(size_t(xvecs) * kXRows * sizeof(Acc));
  }
};

// Pointers into the dynamic shared memory of one block.
template <typename In>
struct Smem {
  using Acc = acc_t<In>;
  static constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  static constexpr int LDS = Layout<In>::LDS, LDD = Layout<In>::LDD;
  In* a;
  In* b;
  Acc* s;
  In* ds;
  Acc* ga;
  Vectors<In>* v;
  Acc* x;  // the Layout's xvecs extra vectors
  int P, ldi, ldg;
  __device__ Smem(unsigned char* base, const Layout<In>& L)
      : a(reinterpret_cast<In*>(base)),
        b(reinterpret_cast<In*>(base + L.off_b())),
        s(reinterpret_cast<Acc*>(base + L.off_s())),
        ds(reinterpret_cast<In*>(base + L.off_ds())),
        ga(reinterpret_cast<Acc*>(base + L.off_g())),
        v(reinterpret_cast<Vectors<In>*>(base + L.off_v())),
        x(reinterpret_cast<Acc*>(base + L.off_x())),
        P(L.panel),
        ldi(L.ldi()),
        ldg(L.ldg()) {}
  __device__ Acc& S(int r, int c) const { return s[r * LDS + c]; }
  // Entry r of extra vector `slot`.
  __device__ Acc& X(int slot, int r) const { return x[slot * Layout<In>::kXRows + r]; }
};

// The per-row operands of a tile, one thread a row: the block's owned rows (OWNED: r < BM,
// global row r0 + r, inverse norm into v.ra) or a column tile's (r < BN, into v.rb), zero at
// or past n; then fill(r, row, row < n) loads the kernel's own slots of r (keys, saved
// statistics) and resets its sums. The caller synchronizes before they are read.
template <typename In, bool OWNED, typename Fill>
__device__ __forceinline__ void load_vectors(Vectors<In>& v, int64_t r0, int64_t n,
                                             const acc_t<In>* inv_norm, Fill&& fill) {
  using Acc = acc_t<In>;
  constexpr int R = OWNED ? TileShape<In>::BM : TileShape<In>::BN;
  Acc* dst = OWNED ? v.ra : v.rb;
  for (int r = threadIdx.x; r < R; r += kTileThreads<In>) {
    const int64_t i = r0 + r;
    const bool ok = i < n;
    dst[r] = ok ? gload(&inv_norm[i]) : Acc(0);
    fill(r, i, ok);
  }
}

// ---------------------------------------------------------------------------------------
// Operand loads
// ---------------------------------------------------------------------------------------
// Issue the copies of rows [r0, r0 + ROWS) × feature columns [c0, c0 + kChunk) of X (n × D,
// row-major) into dst (row stride ld; dst column 0 is feature column c0), zeros outside X.
// vec: elements per copy (16/8/4-byte cp.async; 1 element of a 2-byte type: a plain load).
template <typename In, int ROWS>
__device__ __forceinline__ void load_chunk(In* dst, int ld, const In* X, int64_t r0, int64_t n,
                                           int64_t D, int64_t c0, int vec) {
  const int groups = kChunk / vec;
  for (int e = threadIdx.x; e < ROWS * groups; e += kTileThreads<In>) {
    const int r = e / groups, c = (e % groups) * vec;
    const int64_t row = r0 + r, col = c0 + c;
    const bool valid = row < n && col < D;
    In* d = dst + r * ld + c;
    const In* src = valid ? X + row * D + col : X;
    switch (vec * static_cast<int>(sizeof(In))) {
      case 16: cp_async<16>(d, src, valid); break;
      case 8: cp_async<8>(d, src, valid); break;
      case 4: cp_async<4>(d, src, valid); break;
      default: *d = valid ? gload(src) : from_acc<In, float>(0.0f); break;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The logit tile S = A·Bᵀ over one panel (raw dots; accumulated across panels in registers)
// ---------------------------------------------------------------------------------------
// Accumulators of one thread: MMA — warp w owns the 32×32 block (w/2, w%2) of the
// 128×64 tile as 2×4 m16n8 fragments; SIMT — thread (ty, tx) owns rows ty·TM.., columns
// tx + 16q.
template <typename In, bool MMA = kTensorCores<In>>
struct SAcc;
template <typename In>
struct SAcc<In, true> {
  static_assert(TileShape<In>::BM == 16 * kTileWarps<In> && TileShape<In>::BN == 64,
                "warp w owns the 32×32 block (w/2, w%2)");
  float c[2][4][4];
};
template <typename In>
struct SAcc<In, false> {
  static constexpr int TM = TileShape<In>::BM / 8, TN = TileShape<In>::BN / 16;
  acc_t<In> c[TM][TN];
};

template <typename In>
__device__ __forceinline__ void zero(SAcc<In>& acc) {
  if constexpr (kTensorCores<In>) {
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 4; ++y)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc.c[x][y][i] = 0.0f;
  } else {
#pragma unroll
    for (int p = 0; p < SAcc<In>::TM; ++p)
#pragma unroll
      for (int q = 0; q < SAcc<In>::TN; ++q) acc.c[p][q] = 0;
  }
}

// acc += A[:, k0:k0+kChunk] · B[:, k0:k0+kChunk]ᵀ from the panels in shared memory. MMA: a
// warp skips its 16-row fragments at or past a_rows (the block's valid owned rows; their
// panel rows are zero, so is their S), which a ragged or short last block (64 queries in a
// 128-row block) would otherwise multiply.
template <typename In>
__device__ __forceinline__ void s_chunk(const Smem<In>& sm, int k0, SAcc<In>& acc, int a_rows) {
  using Acc = acc_t<In>;
  const int ld = sm.ldi;
  if constexpr (kTensorCores<In>) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;
#pragma unroll
    for (int kk = 0; kk < kChunk; kk += 16) {
      const int k = k0 + kk;
      if (wr >= a_rows) break;  // warp-uniform
      unsigned fa[2][4], fb[2][4];
#pragma unroll
      for (int x = 0; x < 2; ++x)
        ldsm_x4(fa[x], sm.a + (wr + 16 * x + lane % 16) * ld + k + (lane / 16) * 8);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        ldsm_x4(fb[h], sm.b + (wc + 16 * h + lane % 8 + (lane / 16) * 8) * ld + k +
                           ((lane / 8) % 2) * 8);
#pragma unroll
      for (int x = 0; x < 2; ++x)
        if (wr + 16 * x < a_rows) {
#pragma unroll
          for (int y = 0; y < 4; ++y)
            mma16816<In>(acc.c[x][y], fa[x], fb[y / 2][(y % 2) * 2],
                         fb[y / 2][(y % 2) * 2 + 1]);
        }
    }
  } else {
    constexpr int TM = SAcc<In>::TM, TN = SAcc<In>::TN;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 4
    for (int k = k0; k < k0 + kChunk; ++k) {
      Acc bv[TN];
#pragma unroll
      for (int q = 0; q < TN; ++q) bv[q] = load_acc<Acc>(&sm.b[(tx + 16 * q) * ld + k]);
#pragma unroll
      for (int p = 0; p < TM; ++p) {
        const Acc av = load_acc<Acc>(&sm.a[(ty * TM + p) * ld + k]);
#pragma unroll
        for (int q = 0; q < TN; ++q) acc.c[p][q] = fma(av, bv[q], acc.c[p][q]);
      }
    }
    count_flops(2ull * TM * TN * kChunk);
  }
}

// sm.S = acc (the raw dots of the tile).
template <typename In>
__device__ __forceinline__ void store_s(const Smem<In>& sm, const SAcc<In>& acc) {
  if constexpr (kTensorCores<In>) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = (warp / 2) * 32, wc = (warp % 2) * 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 4; ++y) {
        const int r = wr + 16 * x + g, c = wc + 8 * y + 2 * t;
        sm.S(r, c) = acc.c[x][y][0];
        sm.S(r, c + 1) = acc.c[x][y][1];
        sm.S(r + 8, c) = acc.c[x][y][2];
        sm.S(r + 8, c + 1) = acc.c[x][y][3];
      }
  } else {
    constexpr int TM = SAcc<In>::TM, TN = SAcc<In>::TN;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int p = 0; p < TM; ++p)
#pragma unroll
      for (int q = 0; q < TN; ++q) sm.S(ty * TM + p, tx + 16 * q) = acc.c[p][q];
  }
}

// The operands of one tile and where the block stands: set up by the kernels from the plan.
template <typename In>
struct Operands {
  const In* a;  // owned side (na × D)
  const In* b;  // other side (nb × D)
  int64_t na, nb, d;
  int panels, vec;
};

// Issue the panel loads of one tile: B (and, unless the a panel is resident, A) chunk by
// chunk, one commit group per chunk. Panel `pp` covers feature columns [pp·P, pp·P + P).
template <typename In>
__device__ __forceinline__ void issue_panel(const Smem<In>& sm, const Operands<In>& o, int64_t a0,
                                            int64_t b0, int pp, bool with_a) {
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  const int64_t c0 = static_cast<int64_t>(pp) * sm.P;
  for (int k = 0; k < sm.P; k += kChunk) {
    if (with_a) load_chunk<In, BM>(sm.a + k, sm.ldi, o.a, a0, o.na, o.d, c0 + k, o.vec);
    load_chunk<In, BN>(sm.b + k, sm.ldi, o.b, b0, o.nb, o.d, c0 + k, o.vec);
    cp_async_commit();
  }
}

// The resident a panel (one group), issued once per row block when D fits one panel.
template <typename In>
__device__ __forceinline__ void issue_a(const Smem<In>& sm, const Operands<In>& o, int64_t a0) {
  constexpr int BM = TileShape<In>::BM;
  for (int k = 0; k < sm.P; k += kChunk)
    load_chunk<In, BM>(sm.a + k, sm.ldi, o.a, a0, o.na, o.d, k, o.vec);
  cp_async_commit();
}

// S of tile (a0, b0) into sm.S, and the panel `own` (the block's gradient panel) left in
// shared memory. With one panel: the b panel was issued (prefetched) already, the a panel is
// resident. With several: each panel is loaded in turn, `own` last. Ends synchronized.
template <typename In>
__device__ __forceinline__ void tile_s(const Smem<In>& sm, const Operands<In>& o, int64_t a0,
                                       int64_t b0, int own) {
  SAcc<In> acc;
  zero(acc);
  const int chunks = sm.P / kChunk;
  const int a_rows = static_cast<int>(std::min<int64_t>(TileShape<In>::BM, o.na - a0));
  for (int i = 0; i < o.panels; ++i) {
    if (o.panels > 1) {
      const int pp = i == o.panels - 1 ? own : (i < own ? i : i + 1);
      __syncthreads();  // the previous panel is read
      issue_panel(sm, o, a0, b0, pp, true);
    }
    for (int c = 0; c < chunks; ++c) {
      cp_async_wait_dyn(chunks - 1 - c);  // chunk c (and the resident a panel) landed
      __syncthreads();
      s_chunk(sm, c * kChunk, acc, a_rows);
    }
  }
  store_s(sm, acc);
  __syncthreads();
}

// ---------------------------------------------------------------------------------------
// Gradient products
// ---------------------------------------------------------------------------------------
// MMA operand dS: sm.ds = half(σ · dS ∘ f) with f the owned rows' factor (BY_ROW: f[r]) or
// the columns' (f[c]), σ = 2^e putting σ·max|dS ∘ f| near 2^14 so entries of order g/N² (a
// mean over a large batch) do not flush to zero in half precision; returns 1/σ (the products
// are unscaled exactly in fp32). All threads; ends synchronized.
template <typename In, bool BY_ROW>
__device__ __forceinline__ float stage_ds(const Smem<In>& sm, const float* f) {
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kT = kTileThreads<In>;
  float mx = 0;
  for (int e = threadIdx.x; e < BM * BN; e += kT) {
    const int r = e / BN, c = e % BN;
    mx = fmaxf(mx, fabsf(sm.S(r, c) * f[BY_ROW ? r : c]));
  }
  mx = warp_max(mx);
  if (lane == 0) sm.v->red[warp] = mx;
  __syncthreads();
  mx = 0;
#pragma unroll
  for (int w = 0; w < kTileWarps<In>; ++w) mx = fmaxf(mx, sm.v->red[w]);
  int e = 0;
  if (mx > 0.0f && mx < INFINITY) e = min(120, static_cast<int>(floorf(log2f(16384.0f / mx))));
  const float sigma = ldexpf(1.0f, e);
  for (int i = threadIdx.x; i < BM * BN; i += kT) {
    const int r = i / BN, c = i % BN;
    sm.ds[r * Smem<In>::LDD + c] = from_acc<In, float>(sm.S(r, c) * f[BY_ROW ? r : c] * sigma);
  }
  __syncthreads();  // the red slots are reused by the next staging
  return ldexpf(1.0f, -e);
}

// The left operand of the gradient products, dS (MMA: the staged half tile sm.ds; SIMT: the
// accumulation-dtype tile in sm.S), read by its rows (ga = dS·B, the owned rows) or, COLS, by
// its columns (dSᵀ·A, the other side's rows). Product row r, reduction index k.
template <typename In, bool COLS>
struct DsOperand {
  const Smem<In>& sm;
  // MMA: the m16×k16 A fragment of product rows [r0, r0 + 16), k in [k, k + 16).
  __device__ __forceinline__ void frag(unsigned (&fa)[4], int r0, int k, int lane) const {
    if constexpr (COLS) {
      ldsm_x4_trans(fa, sm.ds + (k + lane % 8 + (lane / 16) * 8) * Smem<In>::LDD + r0 +
                            ((lane / 8) % 2) * 8);
    } else {
      ldsm_x4(fa, sm.ds + (r0 + lane % 16) * Smem<In>::LDD + k + (lane / 16) * 8);
    }
  }
  // SIMT: element (r, k).
  __device__ __forceinline__ acc_t<In> at(int r, int k) const {
    return COLS ? sm.S(k, r) : sm.S(r, k);
  }
};

// The fragment loop of the gradient products that leave the block as they are computed (the
// other side's rows, and SIMT's owned rows): the R product rows of L · (f ∘ X) over the
// reduction k < K, one 32-column block of the panel at a time, with L the dS operand `left`
// (DsOperand), X a panel in shared memory (row k at X + k·ldi) and f its per-row factor (SIMT;
// MMA has it staged into dS). Each element of the result is handed once to epi(r, c, v):
// product row r, panel column c, v the sum (MMA: unscaled by inv_sigma).
// MMA: the R/16 row groups of 16 product rows are spread over the warps, the warps sharing a
// row group taking alternate 32-column blocks, each as 4 m16n8 fragments; SIMT: thread
// (ty, tx) rows ty·TM.., columns tx + 16q of each block.
template <typename In, int R, int K, typename Left, typename Epi>
__device__ __forceinline__ void grad_product(const Smem<In>& sm, const In* X,
                                             const acc_t<In>* f, acc_t<In> inv_sigma,
                                             const Left& left, int k_valid, Epi&& epi) {
  using Acc = acc_t<In>;
  const int ld = sm.ldi;
  if constexpr (kTensorCores<In>) {
    constexpr int kRowGroups = R / 16, kPhases = kTileWarps<In> / kRowGroups;
    static_assert(kPhases >= 1 && kTileWarps<In> % kRowGroups == 0, "warps per row group");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = (warp % kRowGroups) * 16;
    for (int d0 = (warp / kRowGroups) * 32; d0 < sm.P; d0 += 32 * kPhases) {
      float acc[4][4] = {};
#pragma unroll
      for (int k = 0; k < K; k += 16) {
        if (k >= k_valid) break;  // zero dS rows: the block's rows past its valid ones
        unsigned fa[4], fb[2][4];
        left.frag(fa, r0, k, lane);
#pragma unroll
        for (int h = 0; h < 2; ++h)
          ldsm_x4_trans(fb[h], X + (k + lane % 16) * ld + d0 + 16 * h + (lane / 16) * 8);
#pragma unroll
        for (int y = 0; y < 4; ++y)
          mma16816<In>(acc[y], fa, fb[y / 2][(y % 2) * 2], fb[y / 2][(y % 2) * 2 + 1]);
      }
#pragma unroll
      for (int y = 0; y < 4; ++y)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          epi(r0 + g + 8 * (i / 2), d0 + 8 * y + 2 * t + i % 2, acc[y][i] * inv_sigma);
    }
  } else {
    constexpr int TM = R / 8;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    for (int d0 = 0; d0 < sm.P; d0 += 32) {
      Acc acc[TM][2] = {};
      for (int k = 0; k < K; ++k) {
        const Acc fk = f[k];
        const Acc y0 = load_acc<Acc>(&X[k * ld + d0 + tx]) * fk;
        const Acc y1 = load_acc<Acc>(&X[k * ld + d0 + tx + 16]) * fk;
#pragma unroll
        for (int p = 0; p < TM; ++p) {
          const Acc x = left.at(ty * TM + p, k);
          acc[p][0] = fma(x, y0, acc[p][0]);
          acc[p][1] = fma(x, y1, acc[p][1]);
        }
      }
      count_flops(2ull * TM * 2 * K);
#pragma unroll
      for (int p = 0; p < TM; ++p)
#pragma unroll
        for (int q = 0; q < 2; ++q) epi(ty * TM + p, d0 + tx + 16 * q, acc[p][q]);
    }
  }
}

// The open group of a backward block's owned gradient rows: how many tiles it holds, whether
// anything was flushed yet (Flush::kOwn stores instead of adding), and for the tensor-core
// path the rows themselves, in registers: warp w holds rows [16w, 16w + 16) × the panel's
// P ≤ 256 columns as 8 × 4 m16n8 fp32 fragments (128 registers a thread). 128 rows × 256 of
// fp32 do not fit in shared memory beside a 128-row operand panel; SIMT blocks (64 rows) keep
// them there (sm.ga).
template <typename In, bool MMA = kTensorCores<In>>
struct GradGroup {
  int tiles = 0;
  bool first = true;
};
template <typename In>
struct GradGroup<In, true> {
  int tiles = 0;
  bool first = true;
  float ga[kMaxPanel / 32][4][4];
};

// MMA: the owned gradient rows ga (+)= dS_staged · B_panel · inv_sigma over the tile (the
// group's first tile overwrites), warp w's 16 rows into its own registers. The dS fragments
// of the warp's rows are loaded once and reused for every 32-column block.
template <typename In>
__device__ __forceinline__ void da_product_regs(const Smem<In>& sm, float inv_sigma,
                                                GradGroup<In>& group, int a_rows) {
  constexpr int BN = TileShape<In>::BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * 16, ld = sm.ldi;
  if (r0 >= a_rows) return;  // warp-uniform; flush_ga never reads these rows
  const bool first = group.tiles == 0;
  const DsOperand<In, false> left{sm};
  unsigned fa[BN / 16][4];
#pragma unroll
  for (int k = 0; k < BN; k += 16) left.frag(fa[k / 16], r0, k, lane);
#pragma unroll
  for (int blk = 0; blk < kMaxPanel / 32; ++blk) {
    const int d0 = blk * 32;
    if (d0 < sm.P) {
      float acc[4][4] = {};
#pragma unroll
      for (int k = 0; k < BN; k += 16) {
        unsigned fb[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
          ldsm_x4_trans(fb[h], sm.b + (k + lane % 16) * ld + d0 + 16 * h + (lane / 16) * 8);
#pragma unroll
        for (int y = 0; y < 4; ++y)
          mma16816<In>(acc[y], fa[k / 16], fb[y / 2][(y % 2) * 2], fb[y / 2][(y % 2) * 2 + 1]);
      }
#pragma unroll
      for (int y = 0; y < 4; ++y)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          group.ga[blk][y][i] = (first ? 0.0f : group.ga[blk][y][i]) + acc[y][i] * inv_sigma;
    }
  }
}

// SIMT: the owned gradient rows ga (+)= (dS ∘ f_col) · B_panel over the tile (first:
// overwrite), f_col = the columns' inverse norms, in shared memory.
template <typename In>
__device__ __forceinline__ void da_product(const Smem<In>& sm, acc_t<In> inv_sigma, bool first) {
  using Acc = acc_t<In>;
  grad_product<In, TileShape<In>::BM, TileShape<In>::BN>(
      sm, sm.b, sm.v->rb, inv_sigma, DsOperand<In, false>{sm}, TileShape<In>::BN,
      [&](int r, int c, Acc v) {
        Acc& dst = sm.ga[r * sm.ldg + c];
        dst = (first ? Acc(0) : dst) + v;
      });
}

// The other side's gradient rows of the tile: out[b0 + n, c0 + d] += ((dS ∘ f_row)ᵀ · A_panel)
// by one atomic add per element (f_row: the owned rows' factor, applied in stage_ds for MMA,
// per k here for SIMT), reducing over the block's a_rows valid owned rows (MMA; SIMT runs
// all BM).
template <typename In>
__device__ __forceinline__ void db_product(const Smem<In>& sm, acc_t<In> inv_sigma, acc_t<In>* out,
                                           int64_t b0, int64_t nb, int64_t D, int64_t c0,
                                           int a_rows) {
  using Acc = acc_t<In>;
  grad_product<In, TileShape<In>::BN, TileShape<In>::BM>(
      sm, sm.a, sm.v->ra, inv_sigma, DsOperand<In, true>{sm}, a_rows,
      [&](int r, int c, Acc v) {
        const int64_t row = b0 + r, col = c0 + c;
        if (row < nb && col < D) gatomic_add(&out[row * D + col], v);
      });
}

// How a block's gradient rows reach global memory.
enum class Flush : int {
  kOwn = 0,     // the block owns the rows' range: store on its first flush, add afterwards
  kAtomic = 1,  // column range split: one atomic add per element and flush
};

// One element of a flushed gradient row: an atomic add, or (the block owns the rows' range)
// a store on the first flush and a read-modify-write afterwards.
template <typename Acc>
__device__ __forceinline__ void flush_element(Acc* dst, Acc v, Flush mode, bool first) {
  if (mode == Flush::kAtomic) {
    gatomic_add(dst, v);
  } else {
    gstore(dst, first ? v : gload(dst) + v);
  }
}

// out[row0 + r, c0 + c] ← the group's ga[r][c] for the block's rows and panel columns inside
// (nrows, D): MMA from each warp's registers, SIMT from shared memory. All threads; the
// caller synchronizes before (ga complete) and, SIMT, after (ga reused).
template <typename In>
__device__ __forceinline__ void flush_ga(const Smem<In>& sm, const GradGroup<In>& group,
                                         acc_t<In>* out, int64_t row0, int64_t nrows, int64_t D,
                                         int64_t c0, Flush mode) {
  if constexpr (kTensorCores<In>) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int blk = 0; blk < kMaxPanel / 32; ++blk) {
      if (blk * 32 >= sm.P) continue;
#pragma unroll
      for (int y = 0; y < 4; ++y)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t row = row0 + warp * 16 + g + 8 * (i / 2);
          const int64_t col = c0 + blk * 32 + 8 * y + 2 * t + i % 2;
          if (row < nrows && col < D)
            flush_element(&out[row * D + col], group.ga[blk][y][i], mode, group.first);
        }
    }
  } else {
    constexpr int BM = TileShape<In>::BM;
    for (int e = threadIdx.x; e < BM * sm.P; e += kTileThreads<In>) {
      const int r = e / sm.P, c = e % sm.P;
      const int64_t row = row0 + r, col = c0 + c;
      if (row < nrows && col < D)
        flush_element(&out[row * D + col], sm.ga[r * sm.ldg + c], mode, group.first);
    }
  }
}

// The column tiles [lo, lo + count) of split blockIdx.y, visited from a staggered start.
struct TileRange {
  int64_t lo, count, start;
  __device__ int64_t at(int64_t i) const { return lo + (start + i) % count; }
};
__device__ __forceinline__ TileRange tile_range(int64_t tiles, int64_t per_split, int64_t row_block) {
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * per_split;
  const int64_t count = lo < tiles ? min(per_split, tiles - lo) : 0;
  return {lo, count, count > 0 ? row_block % count : 0};
}

// Blocked sums: fold the open group's first kSums sums into the totals (thread r owns row r;
// the caller has synchronized after the group's last writes).
template <typename In, int kSums>
__device__ __forceinline__ void fold_group(const Smem<In>& sm) {
  constexpr int BM = TileShape<In>::BM;
  for (int r = threadIdx.x; r < BM; r += kTileThreads<In>)
    for (int s = 0; s < kSums; ++s) {
      sm.v->tot[s][r] += sm.v->grp[s][r];
      sm.v->grp[s][r] = 0;
    }
}

// The gradient step of a backward tile, tile `it` of the block's range (at column row b0), once
// dS is in sm.S and the tile's per-row partials in the open group's sums grp[0, kSums):
//   dA (owned, on chip) += dS · (r_b ∘ B);
//   the next tile's b panel issued as soon as this one is read (one panel: prefetch);
//   ATOMIC_B: dB[b0.., c0..] += dSᵀ · (r_a ∘ A), one atomic add per element (overlapping
//   those loads);
//   every kGroup tiles and at the end of the range: the group's dA flushed to da (flush_ga)
//   and its sums folded into the totals.
// Half inputs: dS is the MMA operand, staged in the input type times a power of two
// (stage_ds) so that entries of order g/N² do not flush to zero; the products unscale it
// exactly in fp32. All threads; ends synchronized.
template <typename In, bool ATOMIC_B, int kSums>
__device__ __forceinline__ void tile_grad_step(const Smem<In>& sm, const Operands<In>& o,
                                               const TileRange& tr, int64_t it, int64_t a0,
                                               int64_t b0, int64_t c0, acc_t<In>* da,
                                               acc_t<In>* db, Flush flush,
                                               GradGroup<In>& group) {
  using Acc = acc_t<In>;
  constexpr int BN = TileShape<In>::BN;
  const int a_rows = static_cast<int>(std::min<int64_t>(TileShape<In>::BM, o.na - a0));
  Acc inv_sigma = 1;
  if constexpr (kTensorCores<In>) {
    inv_sigma = stage_ds<In, false>(sm, sm.v->rb);
    da_product_regs(sm, inv_sigma, group, a_rows);
  } else {
    da_product(sm, inv_sigma, group.tiles == 0);
  }
  __syncthreads();  // the b panel and the dS operand are read
  if (o.panels == 1 && it + 1 < tr.count) issue_panel(sm, o, a0, tr.at(it + 1) * BN, 0, false);
  if constexpr (ATOMIC_B) {
    if constexpr (kTensorCores<In>) inv_sigma = stage_ds<In, true>(sm, sm.v->ra);
    db_product(sm, inv_sigma, db, b0, o.nb, o.d, c0, a_rows);
  }
  if (++group.tiles == kGroup || it + 1 == tr.count) {
    __syncthreads();  // the group's dA is complete
    flush_ga(sm, group, da, a0, o.na, o.d, c0, flush);
    fold_group<In, kSums>(sm);
    group.first = false;
    group.tiles = 0;
  }
  __syncthreads();  // sm.S, sm.ds and sm.ga are rewritten by the next tile
}

// The gradient rows of a block whose split has no column tile (M = 0), when it owns their
// range: out[row0 + r, c0 + c] = 0 for the block's rows and its panel's P columns inside
// (nrows, D).
template <typename In>
__device__ __forceinline__ void zero_rows(acc_t<In>* out, int64_t row0, int64_t nrows, int64_t D,
                                          int64_t c0, int P) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM;
  for (int e = threadIdx.x; e < BM * P; e += kTileThreads<In>) {
    const int64_t row = row0 + e / P, col = c0 + e % P;
    if (row < nrows && col < D) gstore(&out[row * D + col], Acc(0));
  }
}

// ---------------------------------------------------------------------------------------
// Host side: the launch plan
// ---------------------------------------------------------------------------------------
using ck::acc_type;
using ck::output;

int row_grid(int64_t n) { return static_cast<int>((n + kWarps - 1) / kWarps); }

struct DeviceInfo {
  int sms;
  size_t max_smem;  // dynamic shared memory one block may opt in to
  size_t sm_smem;   // shared memory of one SM (the emulator's occupancy stand-in)
};

#if defined(CK_CUDA_EMULATE)
// The emulator's stand-in for the GPU the plan is sized for — what count_cuda_launches
// reports the grids of: an H100 SXM (132 SMs, 227 KB of shared memory per block, 228 KB per
// SM), or with CONTRASTIVE_KERNELS_LAUNCH_AS=sm_80 an A100 (108 SMs, 163 / 164 KB).
DeviceInfo device_info() {
  const char* as = std::getenv("CONTRASTIVE_KERNELS_LAUNCH_AS");
  if (as != nullptr && std::string(as) == "sm_80") return {108, 163 * 1024, 164 * 1024};
  return {132, 227 * 1024, 228 * 1024};
}
#else
DeviceInfo device_info() {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  int sms = 0, smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return {sms, static_cast<size_t>(smem), 0};
}
#endif

// Blocks of `Kernel` (`threads` a block) one SM holds at `smem` bytes of dynamic shared memory.
template <auto Kernel>
int blocks_per_sm(const DeviceInfo& dev, size_t smem, int threads) {
#if defined(CK_CUDA_EMULATE)
  // The stand-in SM's shared memory (1 KB reserved per block), at most 512 threads (the
  // register budget: 64K registers at ~128 a thread).
  const int by_regs = std::max(1, 512 / threads);
  return std::max<int>(1, std::min<int>(by_regs, static_cast<int>(dev.sm_smem / (smem + 1024))));
#else
  (void)dev;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, threads, smem));
  return std::max(1, blocks);
#endif
}

// Static shared memory of `Kernel` (ptxas reserves 1 KB on sm_90), which the dynamic part
// must leave room for under the per-block limit.
template <auto Kernel>
size_t static_smem() {
#if defined(CK_CUDA_EMULATE)
  return 0;
#else
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, Kernel));
  return attr.sharedSizeBytes;
#endif
}

// Column tiles a split covers at least (fewer would re-read the owned panel more often than
// it saves idle SMs); CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES overrides it (tests: 1).
int min_split_tiles() {
  const char* v = std::getenv("CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES");
  const int n = v != nullptr ? std::atoi(v) : 0;
  return n > 0 ? n : 4;
}

struct Plan {
  int panel = kChunk, panels = 1, vec = 1;
  int64_t tiles = 0, per_split = 1;
  int splits = 1;
  unsigned grid_x = 0;
  size_t smem = 0;
  bool per_panel = false;  // backward: one block per gradient panel (grid z)
  dim3 grid() const {
    return dim3(grid_x, static_cast<unsigned>(splits), per_panel ? static_cast<unsigned>(panels) : 1u);
  }
};

// Elements per operand copy: the widest 16/8/4-byte access that D and both bases allow.
template <typename In>
int vector_width(int64_t d, const void* a, const void* b) {
  if constexpr (!kTensorCores<In>) {
    return 1;  // fp32 / fp64 rows are padded by one element: element-wise copies
  } else {
    const auto aligned = [&](int bytes) {
      return reinterpret_cast<uintptr_t>(a) % bytes == 0 && reinterpret_cast<uintptr_t>(b) % bytes == 0;
    };
    for (int v : {8, 4, 2})
      if (d % v == 0 && aligned(v * 2)) return v;
    return 1;
  }
}

// The launch of a tile kernel over na owned rows and nb other rows: panels (D split only when
// one panel of P = D rounded up to kChunk does not fit the shared memory; a forward block
// loops over them, a backward has one block per gradient panel, each recomputing the logits),
// and column splits sized so that the grid fills the GPU once (SMs × blocks per SM).
// grid_cap bounds grid_x (the CLIP forward's persistent programs); split=false keeps one
// range (mining); xvecs: the Layout's extra vectors (the softmax extra log-sum-exps).
template <typename In, auto Kernel>
Plan make_plan(int64_t na, int64_t nb, int64_t d, bool grad, const void* a, const void* b,
               int64_t grid_cap = 0, bool split = true, int xvecs = 0) {
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  const DeviceInfo dev = device_info();
  const size_t room = dev.max_smem - std::min(dev.max_smem, static_smem<Kernel>());
  Plan p;
  const int64_t dp = (d + kChunk - 1) / kChunk * kChunk;
  for (int np = static_cast<int>((dp + kMaxPanel - 1) / kMaxPanel);; ++np) {
    const int64_t per = (dp + np - 1) / np;
    const int P = static_cast<int>((per + kChunk - 1) / kChunk * kChunk);
    const size_t bytes = Layout<In>{P, grad, xvecs}.bytes();
    if (bytes <= room || P == kChunk) {
      p.panel = P;
      p.panels = static_cast<int>((dp + P - 1) / P);
      p.smem = bytes;
      break;
    }
  }
  p.vec = vector_width<In>(d, a, b);
  const int64_t row_blocks = (na + BM - 1) / BM;
  p.grid_x = static_cast<unsigned>(grid_cap > 0 ? std::min(grid_cap, row_blocks) : row_blocks);
  p.tiles = (nb + BN - 1) / BN;
  p.per_split = std::max<int64_t>(1, p.tiles);
  p.per_panel = grad;
  const int64_t base = static_cast<int64_t>(p.grid_x) * (grad ? p.panels : 1);
  const int64_t target =
      static_cast<int64_t>(dev.sms) * blocks_per_sm<Kernel>(dev, p.smem, kTileThreads<In>);
  if (split && p.tiles > 1 && base > 0 && base < target) {
    const int64_t most = std::max<int64_t>(1, p.tiles / min_split_tiles());
    const int64_t want = std::min((target + base - 1) / base, most);
    p.per_split = (p.tiles + want - 1) / want;
  }
  p.splits = static_cast<int>(std::max<int64_t>(1, (p.tiles + p.per_split - 1) / p.per_split));
  return p;
}

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
