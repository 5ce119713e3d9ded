// The softmax-family engine in CUDA C++: the same contract as engines/softmax.py,
//   lse_i = log([e^{extra_i}] + Σ_{j valid} e^{S_ij}),  pos_i = Σ_{valid, keys match} S_ij,
//   clse_j = log Σ_{i valid} e^{S_ij},  and optionally T ≤ ck::kMaxExtraLse log-sum-exps
//   over each row's negatives (valid, keys differ; the extra logit does not join them):
//   xlse_t,i = log Σ_{j valid, keys differ} e^{xmul_t·S_ij}  (-inf when there is none),
// computed in the same pass with the same blocking as lse (their per-row sums live in the
// Layout's extra vectors, sized at launch: nothing without them), and their dS terms
// xmul_t·g_xlse_t,i·e^{xmul_t·S_ij − xlse_t,i} in the backward.
//
// Tiles (compile-time, per input type; see TileShape and Layout in tile_products.cuh):
//   half/bf16: 128×64 logit tiles, 256 threads (8 warps); fp32: 64×64, 128 threads
//   (4 warps); fp64: 32×32.
//   A block owns a row block (or, TRANSPOSED, a column block) whose feature panel stays in
//   shared memory (D ≤ 256; larger D in equal panels, the logits recomputed per panel block),
//   streams the other side's panels once (cp.async, prefetched one tile ahead), and, in the
//   backward, accumulates its own gradient rows on chip (blocked: kGroup tiles per group):
//   half types in the registers of the warp that owns them (16 rows × 256 in 128 fp32
//   registers a thread), fp32/fp64 in shared memory; written once per group: a plain store,
//   or one atomic add per element when the column range is split across blocks. 128 owned
//   rows halve the streamed side's reads and gradient atomics per FLOP against 64 (a
//   backward's FLOP per byte is below its owned rows, see README "Limitations").
//   Half inputs: mma.sync m16n8k16 (HMMA) from ldmatrix fragments, fp32 accumulation;
//   fp32/fp64: SIMT FMA from conflict-free padded tiles.
// Occupancy (registers from ptxas / cuobjdump, sm_80 and sm_90, no spills; the table is
// benchmarks/cuda_report.py's):
//   half, 256 threads: forward 104–107 registers (two blocks per SM by registers), backward
//   233–254 (one block, 8 warps, per SM). Dynamic shared memory at D = 256 / 128 / 64:
//   forward 141 / 93 / 69 KB → 1 / 2 / 2 blocks per H100 SM (228 KB), 1 / 1 / 2 per A100 SM
//   (164 KB); backward 159 / 111 / 87 KB (no gradient group: it is in registers) → 1 block
//   on both. The cp.async prefetch of the next tile, not occupancy, hides the load latency.
//   fp32, 128 threads: forward 128 registers, backward 126–128 (fp64 up to 150); fp32 keeps
//   D ≤ 256 on chip on an H100 (214 KB backward), D ≤ 128 on an A100 (D = 256: two panels,
//   the logits recomputed per panel block).
// The split of the column range (tile_products.cuh: make_plan) sizes the grid from the SM
// count and this occupancy (cudaOccupancyMaxActiveBlocksPerMultiprocessor), so a skinny
// problem (64 queries × a 4096-key queue) still fills the GPU; a block skips the tile
// products of its warps' rows past the last valid one (64 queries in a 128-row block).
//
// Kernels:
//   inv_norm_kernel         r_i = 1/max(||x_i||, eps)
//   fwd_kernel              row (max, sum, pos[, extra (max, sum)...]) per column split
//                           (lse/pos/xlse directly when one); per-program column partials
//                           (CLIP), persistent over row blocks
//   merge_rows_kernel       row lse/pos/xlse from the split partials, fixed order
//   merge_col_kernel        column lse from the partials, fixed order
//   bwd_kernel              owned rows (or columns, TRANSPOSED) recompute S, form dS, and
//                           accumulate dA on chip (the owned side) and dB (ATOMIC_B: one
//                           atomic per element and tile)
//   norm_backward_kernel    scale and the F.normalize backward, written in the input dtype
//                           (sums the per-split partial gradient rows of the deterministic
//                           mode in a fixed order)
// All rules that decide a value come from ../tile_math.h, shared with the CPU engine.
// The tile machinery (layout, loaders, tile products, dS staging, the launch plan) is in
// tile_products.cuh, shared with the pairwise engine (pairwise_engine_cuda.cu).
#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "engine_cuda.h"
#include "launch.cuh"
#include "tile_products.cuh"

namespace ck_cuda {
namespace {

// ---------------------------------------------------------------------------------------
// Row-wise kernels
// ---------------------------------------------------------------------------------------
template <typename In>
__global__ void __launch_bounds__(kThreads)
    inv_norm_kernel(const In* __restrict__ X, acc_t<In>* __restrict__ R, int64_t n, int64_t D) {
  using Acc = acc_t<In>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  Acc sq = 0;
  for (int64_t c = threadIdx.x % 32; c < D; c += 32) {
    const Acc v = gload_acc<Acc>(&X[row * D + c]);
    sq += v * v;
  }
  sq = warp_sum(sq);
  if (threadIdx.x % 32 == 0) gstore(&R[row], ck::inverse_norm(sq));
}

// dX from G = Σ_j dS_ij r_j k_j: dx = scale·r·(G' − radial·x) with G' = G − diag_i·r·x
// (diag: the pairwise engine's Σ_j dS_ij of a distance loss; null for the softmax family),
// one warp per row. SCALE null means 1. G holds `splits` partial copies (n × D each, the
// deterministic split backward's), summed in order.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    norm_backward_kernel(const In* __restrict__ X, const acc_t<In>* __restrict__ R,
                         const acc_t<In>* __restrict__ G, const acc_t<In>* __restrict__ SCALE,
                         const acc_t<In>* __restrict__ DIAG, In* __restrict__ DX, int64_t n,
                         int64_t D, int64_t splits, bool normalize) {
  using Acc = acc_t<In>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const int lane = threadIdx.x % 32;
  const Acc scale = SCALE != nullptr ? gload(SCALE) : Acc(1);
  const Acc r = normalize ? gload(&R[row]) : Acc(1);
  const Acc diag = DIAG != nullptr ? gload(&DIAG[row]) * r : Acc(0);
  auto g_at = [&](int64_t c, Acc x) {
    Acc g = gload(&G[row * D + c]);
    for (int64_t s = 1; s < splits; ++s) g += gload(&G[(s * n + row) * D + c]);
    // G' (the softmax family has no diag term and reads G unchanged).
    return DIAG != nullptr ? g - diag * x : g;
  };
  Acc radial = 0;
  if (normalize) {
    Acc gx = 0;
    for (int64_t c = lane; c < D; c += 32) {
      const Acc x = gload_acc<Acc>(&X[row * D + c]);
      gx += g_at(c, x) * x;
    }
    radial = ck::radial_coef(warp_sum(gx), r);
  }
  for (int64_t c = lane; c < D; c += 32) {
    const Acc x = gload_acc<Acc>(&X[row * D + c]);
    gstore(&DX[row * D + c], from_acc<In, Acc>(ck::normalized_grad(scale, r, g_at(c, x), radial, x)));
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <typename In>
struct FwdParams {
  using Acc = acc_t<In>;
  const In* q;
  const In* k;
  const Acc* rq;
  const Acc* rk;
  const Acc* scale;
  const int64_t* row_key;
  const int64_t* col_key;
  const Acc* extra;  // nullable
  Acc* lse;          // splits == 1: the results
  Acc* pos;
  Acc* part;   // splits > 1: [3 + 2·n_extra][splits][n] = (max, sum, pos, then each extra
               // log-sum-exp's (max, sum)) of each split
  Acc* col_m;  // [programs, M], nullable unless need_col
  Acc* col_l;
  int64_t n, m, d, tiles, per_split;
  int panel, panels, vec, splits;
  bool mask_diag, need_col;
  const Acc* xmul;  // [n_extra] multipliers of the extra log-sum-exps, nullable
  Acc* xlse;        // [n_extra, n], splits == 1: the results
  int n_extra;
};

// The forward's extra vectors (Layout::xvecs = kXFwdSlots·n_extra): per extra log-sum-exp t,
// the open group's (max, sum) and the totals' (max, sum) of each owned row, blocked as the
// row lse's grp / tot.
enum : int { kXGroupM = 0, kXGroupL = 1, kXTotM = 2, kXTotL = 3, kXFwdSlots = 4 };

// The extra log-sum-exps of owned row r over this tile's negatives: xmul_t·S into their open
// groups, as the row pass does for S. s_vals: the lane's logits (columns lane + 32u); neg:
// bit u set where that column is valid with another key. One warp; lane 0 writes.
template <typename In, int kColsPerLane>
__device__ __forceinline__ void extra_row_update(const Smem<In>& sm, int n_extra, int r,
                                                 const acc_t<In> (&s_vals)[kColsPerLane],
                                                 unsigned neg) {
  using Acc = acc_t<In>;
  for (int t = 0; t < n_extra; ++t) {
    const Acc mul = sm.v->scalar[1 + t];
    // Masked, not mul·(-inf): mul may be 0 or negative.
    Acc mx = ck::neg_inf<Acc>();
    for (int u = 0; u < kColsPerLane; ++u) {
      const Acc x = (neg >> u) & 1u ? mul * s_vals[u] : ck::neg_inf<Acc>();
      mx = x > mx ? x : mx;
    }
    mx = warp_max(mx);
    Acc& gm = sm.X(kXFwdSlots * t + kXGroupM, r);
    Acc& gl = sm.X(kXFwdSlots * t + kXGroupL, r);
    const Acc m_old = gm;
    const Acc m_new = m_old > mx ? m_old : mx;
    const Acc shift = ck::lse_shift(m_new);
    Acc l = 0;
    for (int u = 0; u < kColsPerLane; ++u)
      l += (neg >> u) & 1u ? exp(mul * s_vals[u] - shift) : Acc(0);
    l = warp_sum(l);
    __syncwarp();
    if (threadIdx.x % 32 == 0) {
      gl = gl * exp(m_old - shift) + l;
      gm = m_new;
    }
  }
}

// Thread-per-row steps of the forward's extra vectors: reset (start of a row block), fold the
// open group into the totals (every kGroup tiles), and the row's result or split partial.
template <typename In>
__device__ __forceinline__ void extra_reset(const Smem<In>& sm, int n_extra, int r) {
  for (int t = 0; t < n_extra; ++t) {
    sm.X(kXFwdSlots * t + kXGroupM, r) = ck::neg_inf<acc_t<In>>();
    sm.X(kXFwdSlots * t + kXGroupL, r) = 0;
    sm.X(kXFwdSlots * t + kXTotM, r) = ck::neg_inf<acc_t<In>>();
    sm.X(kXFwdSlots * t + kXTotL, r) = 0;
  }
}
template <typename In>
__device__ __forceinline__ void extra_fold(const Smem<In>& sm, int n_extra, int r) {
  for (int t = 0; t < n_extra; ++t) {
    const int x = kXFwdSlots * t;
    ck::merge_lse(sm.X(x + kXTotM, r), sm.X(x + kXTotL, r), sm.X(x + kXGroupM, r),
                  sm.X(x + kXGroupL, r));
    sm.X(x + kXGroupM, r) = ck::neg_inf<acc_t<In>>();
    sm.X(x + kXGroupL, r) = 0;
  }
}
template <typename In>
__device__ __forceinline__ void extra_store(const Smem<In>& sm, const FwdParams<In>& p, int r,
                                            int64_t i, int split) {
  for (int t = 0; t < p.n_extra; ++t) {
    const auto m = sm.X(kXFwdSlots * t + kXTotM, r), l = sm.X(kXFwdSlots * t + kXTotL, r);
    if (p.splits == 1) {
      gstore(&p.xlse[t * p.n + i], ck::finish_lse(m, l));
    } else {
      gstore(&p.part[((3 + 2 * t) * static_cast<int64_t>(p.splits) + split) * p.n + i], m);
      gstore(&p.part[((4 + 2 * t) * static_cast<int64_t>(p.splits) + split) * p.n + i], l);
    }
  }
}

template <typename In>
__global__ void __launch_bounds__(kTileThreads<In>, 512 / kTileThreads<In>) fwd_kernel(const FwdParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  constexpr int kRowsPerWarp = BM / kTileWarps<In>, kColsPerLane = BN / 32;
  CK_DYNAMIC_SMEM(smem);
  const Smem<In> sm(smem, Layout<In>{p.panel, false, kXFwdSlots * p.n_extra});
  Vectors<In>& v = *sm.v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Operands<In> o{p.q, p.k, p.n, p.m, p.d, p.panels, p.vec};
  const int64_t col_base = static_cast<int64_t>(blockIdx.x) * p.m;
  const int64_t row_blocks = (p.n + BM - 1) / BM;
  const int split = blockIdx.y;
  if (threadIdx.x == 0) {
    v.scalar[0] = gload(p.scale);
    for (int t = 0; t < p.n_extra; ++t) v.scalar[1 + t] = gload(&p.xmul[t]);
  }
  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const int64_t i0 = rb * BM;
    const TileRange tr = tile_range(p.tiles, p.per_split, rb);
    __syncthreads();  // the previous row block's vectors are read
    load_vectors<In, true>(v, i0, p.n, p.rq, [&](int r, int64_t i, bool ok) {
      v.ka[r] = ok ? gload(&p.row_key[i]) : 0;
      // The extra logit is one more candidate of the row: counted by split 0 only.
      const bool has_extra = p.extra != nullptr && ok && split == 0;
      v.tot[0][r] = has_extra ? gload(&p.extra[i]) : ck::neg_inf<Acc>();
      v.tot[1][r] = has_extra ? Acc(1) : Acc(0);
      v.tot[2][r] = 0;
      v.grp[0][r] = ck::neg_inf<Acc>();
      v.grp[1][r] = 0;
      v.grp[2][r] = 0;
      extra_reset(sm, p.n_extra, r);  // the extra logit does not join them
    });
    if (p.panels == 1) {
      issue_a(sm, o, i0);
      if (tr.count > 0) issue_panel(sm, o, i0, tr.at(0) * BN, 0, false);
    }
    int in_group = 0;
    for (int64_t it = 0; it < tr.count; ++it) {
      const int64_t j0 = tr.at(it) * BN;
      tile_s(sm, o, i0, j0, 0);
      // The b panel is dead: prefetch the next tile's while this one's epilogue runs.
      if (p.panels == 1 && it + 1 < tr.count) issue_panel(sm, o, i0, tr.at(it + 1) * BN, 0, false);
      load_vectors<In, false>(v, j0, p.m, p.rk, [&](int c, int64_t j, bool ok) {
        v.kb[c] = ok ? gload(&p.col_key[j]) : 0;
      });
      __syncthreads();
      // Row pass: one warp per row, lanes across the columns.
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int r = warp * kRowsPerWarp + rr;
        const int64_t i = i0 + r;
        if (i >= p.n) {
          for (int c = lane; c < BN; c += 32) sm.S(r, c) = ck::neg_inf<Acc>();
          continue;
        }
        const Acc sa = v.scalar[0] * v.ra[r];
        const int64_t key = v.ka[r];
        Acc s_vals[kColsPerLane];
        Acc mx = ck::neg_inf<Acc>(), pos = 0;
        unsigned neg = 0;  // the lane's negatives, for the extra log-sum-exps
#pragma unroll
        for (int t = 0; t < kColsPerLane; ++t) {
          const int c = lane + 32 * t;
          const int64_t j = j0 + c;
          const bool valid = j < p.m && !(p.mask_diag && i == j);
          const Acc s = valid ? sm.S(r, c) * sa * v.rb[c] : ck::neg_inf<Acc>();
          if (valid && v.kb[c] == key) pos += s;
          if (valid && v.kb[c] != key) neg |= 1u << t;
          s_vals[t] = s;
          sm.S(r, c) = s;
          mx = s > mx ? s : mx;
        }
        mx = warp_max(mx);
        pos = warp_sum(pos);
        const Acc m_old = v.grp[0][r];
        const Acc m_new = m_old > mx ? m_old : mx;
        const Acc shift = ck::lse_shift(m_new);
        Acc l = 0;
#pragma unroll
        for (int t = 0; t < kColsPerLane; ++t) l += exp(s_vals[t] - shift);
        l = warp_sum(l);
        __syncwarp();
        if (lane == 0) {
          v.grp[1][r] = v.grp[1][r] * exp(m_old - shift) + l;
          v.grp[0][r] = m_new;
          v.grp[2][r] += pos;
        }
        if (p.n_extra > 0) extra_row_update<In>(sm, p.n_extra, r, s_vals, neg);
      }
      __syncthreads();
      if (p.need_col) {
        // Column pass over the masked logits: one thread per column.
        for (int c = threadIdx.x; c < BN; c += kTileThreads<In>) {
          const int64_t j = j0 + c;
          if (j >= p.m) continue;
          const Acc m_old = gload(&p.col_m[col_base + j]);
          Acc mx = m_old;
          for (int r = 0; r < BM; ++r) mx = sm.S(r, c) > mx ? sm.S(r, c) : mx;
          const Acc shift = ck::lse_shift(mx);
          Acc l = gload(&p.col_l[col_base + j]) * exp(m_old - shift);
          for (int r = 0; r < BM; ++r) l += exp(sm.S(r, c) - shift);
          gstore(&p.col_m[col_base + j], mx);
          gstore(&p.col_l[col_base + j], l);
        }
      }
      // Blocked sums: fold the group into the row totals every kGroup tiles (thread r owns
      // row r here; the row pass's writes are behind the barrier above).
      if (++in_group == kGroup || it + 1 == tr.count) {
        for (int r = threadIdx.x; r < BM; r += kTileThreads<In>) {
          ck::merge_lse(v.tot[0][r], v.tot[1][r], v.grp[0][r], v.grp[1][r]);
          v.tot[2][r] += v.grp[2][r];
          v.grp[0][r] = ck::neg_inf<Acc>();
          v.grp[1][r] = 0;
          v.grp[2][r] = 0;
          extra_fold(sm, p.n_extra, r);
        }
        in_group = 0;
      }
      // (The next tile's S store comes after tile_s's barriers: sm.S is free by then.)
    }
    for (int r = threadIdx.x; r < BM; r += kTileThreads<In>) {
      const int64_t i = i0 + r;
      if (i >= p.n) continue;
      if (p.splits == 1) {
        gstore(&p.lse[i], ck::finish_lse(v.tot[0][r], v.tot[1][r]));
        gstore(&p.pos[i], v.tot[2][r]);
      } else {
        gstore(&p.part[(0 * p.splits + split) * p.n + i], v.tot[0][r]);
        gstore(&p.part[(1 * p.splits + split) * p.n + i], v.tot[1][r]);
        gstore(&p.part[(2 * p.splits + split) * p.n + i], v.tot[2][r]);
      }
      extra_store(sm, p, r, i, split);
    }
  }
  cp_async_wait<0>();
}

// Row lse / pos from the splits' (max, sum, pos), merged in split order; likewise each
// extra log-sum-exp t from its (max, sum) partials (part rows 3 + 2t, 4 + 2t).
template <typename Acc>
__global__ void merge_rows_kernel(const Acc* __restrict__ part, Acc* __restrict__ lse,
                                  Acc* __restrict__ pos, Acc* __restrict__ xlse,
                                  int64_t splits, int64_t n, int n_extra) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Acc mx = ck::neg_inf<Acc>(), l = 0, ps = 0;
  for (int64_t s = 0; s < splits; ++s) {
    ck::merge_lse(mx, l, gload(&part[s * n + i]), gload(&part[(splits + s) * n + i]));
    ps += gload(&part[(2 * splits + s) * n + i]);
  }
  gstore(&lse[i], ck::finish_lse(mx, l));
  gstore(&pos[i], ps);
  for (int t = 0; t < n_extra; ++t) {
    const int64_t row_m = (3 + 2 * t) * splits, row_l = (4 + 2 * t) * splits;
    Acc xm = ck::neg_inf<Acc>(), xl = 0;
    for (int64_t s = 0; s < splits; ++s)
      ck::merge_lse(xm, xl, gload(&part[(row_m + s) * n + i]), gload(&part[(row_l + s) * n + i]));
    gstore(&xlse[t * n + i], ck::finish_lse(xm, xl));
  }
}

template <typename Acc>
__global__ void merge_col_kernel(const Acc* __restrict__ col_m, const Acc* __restrict__ col_l,
                                 Acc* __restrict__ clse, int64_t programs, int64_t m) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  Acc mx = ck::neg_inf<Acc>(), l = 0;
  for (int64_t p = 0; p < programs; ++p)
    ck::merge_lse(mx, l, gload(&col_m[p * m + j]), gload(&col_l[p * m + j]));
  gstore(&clse[j], ck::finish_lse(mx, l));
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <typename In>
struct BwdParams {
  using Acc = acc_t<In>;
  const In* a;  // owned side: rows of S, or its columns when TRANSPOSED
  const In* b;
  const Acc* ra;
  const Acc* rb;
  const Acc* scale;
  const int64_t* row_key;
  const int64_t* col_key;
  const Acc* lse;
  const Acc* g_lse;
  const Acc* g_pos;
  const Acc* clse;    // nullable
  const Acc* g_clse;  // nullable
  Acc* da;            // [na, D] owned rows, or [splits, na, D] per-split partials
  Acc* db;            // [nb, D], atomics (ATOMIC_B) or unused
  Acc* dscale;        // [splits, na] Σ_b dS·cos per owned row and split, or nullable
  int64_t na, nb, d, tiles, per_split;
  int panel, panels, vec, splits;
  Flush flush;
  bool partials;      // da is [splits, na, D]
  bool mask_diag;
  const Acc* xmul;    // [n_extra] multipliers of the extra log-sum-exps, nullable
  const Acc* xlse;    // [n_extra, rows of S], nullable
  const Acc* g_xlse;  // [n_extra, rows of S], nullable
  int n_extra;
};

// The backward's extra vectors (Layout::xvecs = kXBwdSlots·n_extra): per extra log-sum-exp
// t, the saved xlse_t and its upstream gradient for each row of S in the tile (the owned rows,
// or the tile's columns when TRANSPOSED), loaded with lse / g_lse.
enum : int { kXLse = 0, kXGrad = 1, kXBwdSlots = 2 };

template <typename In>
__device__ __forceinline__ void extra_load(const Smem<In>& sm, const BwdParams<In>& p, int x,
                                           int64_t i, int64_t rows, bool ok) {
  for (int t = 0; t < p.n_extra; ++t) {
    sm.X(kXBwdSlots * t + kXLse, x) = ok ? gload(&p.xlse[t * rows + i]) : acc_t<In>(0);
    sm.X(kXBwdSlots * t + kXGrad, x) = ok ? gload(&p.g_xlse[t * rows + i]) : acc_t<In>(0);
  }
}

// The extra log-sum-exps' terms of dS for a negative pair of logit s (the forward's rounding)
// whose row of S is entry x of the extra vectors (ck::extra_lse_grad). A fixed trip count
// with a guard, not `t < n_extra`: measured with ptxas, the runtime-bounded loop cost the
// fp32 ATOMIC_B kernel 24–40 registers (128 → 152 / 168 on sm_80 / sm_90); this form keeps
// the fp32 and half kernels within 2 of their counts without extra log-sum-exps.
template <typename In>
__device__ __forceinline__ acc_t<In> extra_grads(const Smem<In>& sm, int n_extra, int x,
                                                 acc_t<In> s) {
  using Acc = acc_t<In>;
  Acc g = 0;
  for (int t = 0; t < ck::kMaxExtraLse; ++t) {
    if (t < n_extra) {
      const Acc mul = sm.v->scalar[1 + t];
      const Acc e = exp(mul * s - sm.X(kXBwdSlots * t + kXLse, x));
      g += ck::extra_lse_grad(mul, sm.X(kXBwdSlots * t + kXGrad, x), e);
    }
  }
  return g;
}

template <typename In, bool TRANSPOSED, bool ATOMIC_B, bool HAS_COL>
__global__ void __launch_bounds__(kTileThreads<In>, 1) bwd_kernel(const BwdParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  constexpr int kRowsPerWarp = BM / kTileWarps<In>, kColsPerLane = BN / 32;
  CK_DYNAMIC_SMEM(smem);
  const Smem<In> sm(smem, Layout<In>{p.panel, true, kXBwdSlots * p.n_extra});
  Vectors<In>& v = *sm.v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Operands<In> o{p.a, p.b, p.na, p.nb, p.d, p.panels, p.vec};
  const int64_t rb = blockIdx.x, a0 = rb * BM;
  const int split = blockIdx.y, panel = blockIdx.z;
  const bool lead = panel == 0;  // the panel-0 block writes the per-row scalars
  const int64_t c0 = static_cast<int64_t>(panel) * p.panel;
  const TileRange tr = tile_range(p.tiles, p.per_split, rb);
  Acc* da = p.da + (p.partials ? static_cast<int64_t>(split) * p.na * p.d : 0);
  // Per owned row: the saved statistics of S's rows (or columns, TRANSPOSED), and the blocked
  // sum of dS·cos (the scale gradient).
  if (threadIdx.x == 0) {
    v.scalar[0] = gload(p.scale);
    for (int t = 0; t < p.n_extra; ++t) v.scalar[1 + t] = gload(&p.xmul[t]);
  }
  load_vectors<In, true>(v, a0, p.na, p.ra, [&](int r, int64_t ia, bool ok) {
    if constexpr (TRANSPOSED) {
      v.ka[r] = ok ? gload(&p.col_key[ia]) : 0;
      v.va[0][r] = HAS_COL && ok ? gload(&p.clse[ia]) : Acc(0);
      v.va[1][r] = HAS_COL && ok ? gload(&p.g_clse[ia]) : Acc(0);
    } else {
      v.ka[r] = ok ? gload(&p.row_key[ia]) : 0;
      v.va[0][r] = ok ? gload(&p.lse[ia]) : Acc(0);
      v.va[1][r] = ok ? gload(&p.g_lse[ia]) : Acc(0);
      v.va[2][r] = ok ? gload(&p.g_pos[ia]) : Acc(0);
      extra_load(sm, p, r, ia, p.na, ok);
    }
    v.tot[0][r] = 0;
    v.grp[0][r] = 0;
  });
  if (p.panels == 1) {
    issue_a(sm, o, a0);
    if (tr.count > 0) issue_panel(sm, o, a0, tr.at(0) * BN, 0, false);
  }
  GradGroup<In> group;
  for (int64_t it = 0; it < tr.count; ++it) {
    const int64_t b0 = tr.at(it) * BN;
    tile_s(sm, o, a0, b0, panel);
    load_vectors<In, false>(v, b0, p.nb, p.rb, [&](int c, int64_t ib, bool ok) {
      if constexpr (TRANSPOSED) {
        v.kb[c] = ok ? gload(&p.row_key[ib]) : 0;
        v.vb[0][c] = ok ? gload(&p.lse[ib]) : Acc(0);
        v.vb[1][c] = ok ? gload(&p.g_lse[ib]) : Acc(0);
        v.vb[2][c] = ok ? gload(&p.g_pos[ib]) : Acc(0);
        extra_load(sm, p, c, ib, p.nb, ok);
      } else {
        v.kb[c] = ok ? gload(&p.col_key[ib]) : 0;
        v.vb[0][c] = HAS_COL && ok ? gload(&p.clse[ib]) : Acc(0);
        v.vb[1][c] = HAS_COL && ok ? gload(&p.g_clse[ib]) : Acc(0);
      }
    });
    __syncthreads();
    // dS, one warp per owned row; the same S rounding as the forward.
    const Acc scale = v.scalar[0];
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t ia = a0 + r;
      const bool a_ok = ia < p.na;
      const Acc ra = v.ra[r];
      Acc part = 0;
#pragma unroll
      for (int t = 0; t < kColsPerLane; ++t) {
        const int c = lane + 32 * t;
        const int64_t ib = b0 + c;
        const bool valid = a_ok && ib < p.nb && !(p.mask_diag && ia == ib);
        Acc ds = 0;
        const Acc dots = sm.S(r, c);
        if (valid) {
          const Acc rb = v.rb[c];
          const Acc s = TRANSPOSED ? dots * (scale * rb) * ra : dots * (scale * ra) * rb;
          // S's row i and column j: (ia, ib), or (ib, ia) when TRANSPOSED.
          const Acc lse_i = TRANSPOSED ? v.vb[0][c] : v.va[0][r];
          const Acc g_lse_i = TRANSPOSED ? v.vb[1][c] : v.va[1][r];
          const Acc g_pos_i = TRANSPOSED ? v.vb[2][c] : v.va[2][r];
          const Acc clse_j = TRANSPOSED ? v.va[0][r] : v.vb[0][c];
          const Acc g_clse_j = TRANSPOSED ? v.va[1][r] : v.vb[1][c];
          const Acc gc = HAS_COL ? g_clse_j : Acc(0);
          const Acc ec = HAS_COL ? exp(s - clse_j) : Acc(0);
          ds = ck::logit_grad(g_lse_i, exp(s - lse_i), v.ka[r] == v.kb[c], g_pos_i, gc, ec);
          if (p.n_extra > 0 && v.ka[r] != v.kb[c])
            ds += extra_grads(sm, p.n_extra, TRANSPOSED ? c : r, s);
          part += ds * (dots * ra * rb);
        }
        sm.S(r, c) = ds;  // only this lane reads or writes element (r, c) here
      }
      part = warp_sum(part);
      if (lane == 0) v.grp[0][r] += part;
    }
    __syncthreads();
    // dA (owned, on chip) += dS · (r_b·B); ATOMIC_B: dB += dSᵀ · (r_a·A) by atomics; the
    // group flush and the dscale sums' fold (slot 0).
    tile_grad_step<In, ATOMIC_B, 1>(sm, o, tr, it, a0, b0, c0, da, p.db, p.flush, group);
  }
  // No column at all (M = 0): the owned gradient rows are zero.
  if (tr.count == 0 && p.flush == Flush::kOwn) zero_rows<In>(da, a0, p.na, p.d, c0, p.panel);
  if (p.dscale != nullptr && lead) {
    for (int r = threadIdx.x; r < BM; r += kTileThreads<In>)
      if (a0 + r < p.na) gstore(&p.dscale[split * p.na + a0 + r], v.tot[0][r]);
  }
  cp_async_wait<0>();
}

}  // namespace

void norm_backward_cuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& g,
                        const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& diag, bool normalize, at::Tensor& dx) {
  const int64_t n = x.size(0), d = x.size(1);
  if (n == 0) return;
  const int64_t splits = g.dim() == 3 ? g.size(0) : 1;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    launch<norm_backward_kernel<In>>(row_grid(n), kThreads, 0, stream, ptr<In>(x), ptr<Acc>(r),
                                     ptr<Acc>(g), scale ? ptr<Acc>(*scale) : nullptr,
                                     diag ? ptr<Acc>(*diag) : nullptr, mut_ptr<In>(dx), n, d,
                                     splits, normalize);
  });
}

at::Tensor inverse_norms_cuda(const at::Tensor& x, bool normalize) {
  const int64_t n = x.size(0), d = x.size(1);
  auto opts = x.options().dtype(acc_type(x.scalar_type()));
  if (!normalize) return at::ones({n}, opts);
  at::Tensor r = output({n}, opts);
  if (n == 0) return r;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    launch<inv_norm_kernel<In>>(row_grid(n), kThreads, 0, stream, ptr<In>(x),
                                mut_ptr<acc_t<In>>(r), n, d);
  });
  return r;
}

std::vector<at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& rq, const at::Tensor& rk,
                                     const at::Tensor& scale, const at::Tensor& row_key,
                                     const at::Tensor& col_key,
                                     const c10::optional<at::Tensor>& extra, bool mask_diag,
                                     bool need_col, int64_t programs,
                                     const c10::optional<at::Tensor>& xmul) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const int n_extra = xmul ? static_cast<int>(xmul->size(0)) : 0;
  auto opts = q.options().dtype(acc_type(q.scalar_type()));
  at::Tensor lse = output({n}, opts), pos = output({n}, opts);
  at::Tensor clse = need_col ? output({m}, opts) : at::empty({0}, opts);
  at::Tensor xlse = output({n_extra, n}, opts);
  if (n == 0) {
    if (need_col) clse.fill_(-std::numeric_limits<double>::infinity());
    return {lse, pos, clse, xlse};
  }
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    // CLIP: persistent programs (at most `programs`) keep the column partials [programs, M].
    const Plan pl = make_plan<In, fwd_kernel<In>>(n, m, d, false, q.data_ptr(), k.data_ptr(),
                                                  need_col ? programs : 0, true,
                                                  kXFwdSlots * n_extra);
    at::Tensor col_m, col_l, part;
    if (need_col) {
      col_m = at::full({pl.grid_x, m}, -std::numeric_limits<double>::infinity(), opts);
      col_l = at::zeros({pl.grid_x, m}, opts);
    }
    if (pl.splits > 1) part = at::empty({3 + 2 * n_extra, pl.splits, n}, opts);
    FwdParams<In> p{ptr<In>(q), ptr<In>(k), ptr<Acc>(rq), ptr<Acc>(rk), ptr<Acc>(scale),
                    row_key.data_ptr<int64_t>(), col_key.data_ptr<int64_t>(),
                    extra ? ptr<Acc>(*extra) : nullptr, mut_ptr<Acc>(lse), mut_ptr<Acc>(pos),
                    pl.splits > 1 ? mut_ptr<Acc>(part) : nullptr,
                    need_col ? mut_ptr<Acc>(col_m) : nullptr,
                    need_col ? mut_ptr<Acc>(col_l) : nullptr, n, m, d, pl.tiles, pl.per_split,
                    pl.panel, pl.panels, pl.vec, pl.splits, mask_diag, need_col,
                    n_extra > 0 ? ptr<Acc>(*xmul) : nullptr,
                    n_extra > 0 ? mut_ptr<Acc>(xlse) : nullptr, n_extra};
    launch<fwd_kernel<In>>(pl.grid(), kTileThreads<In>, pl.smem, stream, p);
    if (pl.splits > 1)
      launch<merge_rows_kernel<Acc>>(static_cast<unsigned>((n + 255) / 256), 256, 0, stream,
                                     ptr<Acc>(part), mut_ptr<Acc>(lse), mut_ptr<Acc>(pos),
                                     n_extra > 0 ? mut_ptr<Acc>(xlse) : nullptr,
                                     static_cast<int64_t>(pl.splits), n, n_extra);
    if (need_col && m > 0) {  // no columns: nothing to merge (a 0-block grid is invalid)
      launch<merge_col_kernel<Acc>>(static_cast<unsigned>((m + 255) / 256), 256, 0, stream,
                                    ptr<Acc>(col_m), ptr<Acc>(col_l), mut_ptr<Acc>(clse),
                                    static_cast<int64_t>(pl.grid_x), m);
    }
  });
  return {lse, pos, clse, xlse};
}

namespace {

// One backward pass owning p.a's rows (TRANSPOSED: S's columns): plans the grid, allocates
// its gradient rows (plain rows, zeroed rows for atomics, or per-split partials in the
// deterministic mode) and the per-split dscale partials (when want_dscale), and launches.
// Returns (the owned side's gradient rows [na, D] or [splits, na, D], dscale partials).
template <typename In, bool TRANSPOSED, bool ATOMIC_B, bool HAS_COL>
std::pair<at::Tensor, at::Tensor> run_bwd(BwdParams<In> p, bool deterministic, bool want_dscale,
                                          const at::TensorOptions& opts, cudaStream_t stream) {
  constexpr auto kernel = bwd_kernel<In, TRANSPOSED, ATOMIC_B, HAS_COL>;
  using Acc = acc_t<In>;
  const Plan pl = make_plan<In, kernel>(p.na, p.nb, p.d, true, p.a, p.b, 0, true,
                                        kXBwdSlots * p.n_extra);
  const bool split = pl.splits > 1;
  at::Tensor da;
  if (split && deterministic) {
    da = at::empty({pl.splits, p.na, p.d}, opts);
  } else if (split) {
    da = at::zeros({p.na, p.d}, opts);
  } else {
    da = at::empty({p.na, p.d}, opts);
  }
  at::Tensor dscale = want_dscale ? at::empty({pl.splits, p.na}, opts) : at::Tensor();
  p.da = mut_ptr<Acc>(da);
  p.dscale = want_dscale ? mut_ptr<Acc>(dscale) : nullptr;
  p.tiles = pl.tiles;
  p.per_split = pl.per_split;
  p.panel = pl.panel;
  p.panels = pl.panels;
  p.vec = pl.vec;
  p.splits = pl.splits;
  p.flush = split && !deterministic ? Flush::kAtomic : Flush::kOwn;
  p.partials = split && deterministic;
  if (p.na > 0) launch<kernel>(pl.grid(), kTileThreads<In>, pl.smem, stream, p);
  return {da, dscale};
}

template <typename In, bool TRANSPOSED, bool ATOMIC_B>
std::pair<at::Tensor, at::Tensor> run_bwd(const BwdParams<In>& p, bool has_col, bool deterministic,
                                          bool want_dscale, const at::TensorOptions& opts,
                                          cudaStream_t stream) {
  return has_col ? run_bwd<In, TRANSPOSED, ATOMIC_B, true>(p, deterministic, want_dscale, opts, stream)
                 : run_bwd<In, TRANSPOSED, ATOMIC_B, false>(p, deterministic, want_dscale, opts, stream);
}

}  // namespace

std::vector<at::Tensor> backward_cuda(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& scale, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& lse,
                                      const at::Tensor& clse, const at::Tensor& g_lse,
                                      const at::Tensor& g_pos, const at::Tensor& g_clse,
                                      bool mask_diag, bool normalize, bool deterministic,
                                      bool need_dq, bool need_dk,
                                      const c10::optional<at::Tensor>& xmul,
                                      const c10::optional<at::Tensor>& xlse,
                                      const c10::optional<at::Tensor>& g_xlse) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const int n_extra = xmul ? static_cast<int>(xmul->size(0)) : 0;
  auto opts = q.options().dtype(acc_type(q.scalar_type()));
  const bool has_col = clse.numel() > 0;
  // Passes: the row pass owns dQ (and, one-pass, adds dK by atomics); the column pass owns
  // dK. dK alone (frozen queries) is the column pass alone; dQ alone (a frozen key bank) the
  // row pass without dK. The scale gradient comes from the first pass that runs.
  const bool atomic_b = need_dq && need_dk && !deterministic;
  const bool row_pass = need_dq || !need_dk;
  const bool col_pass = need_dk && !atomic_b;
  at::Tensor dq_acc, dk_acc, dscale_rows;
  // A gradient not needed comes back as a (0, D) tensor (the CPU engine's contract).
  at::Tensor dq = need_dq ? output(q.sizes(), q.options()) : at::empty({0, d}, q.options());
  at::Tensor dk = need_dk ? output(k.sizes(), k.options()) : at::empty({0, d}, k.options());
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    const Acc* cl = has_col ? ptr<Acc>(clse) : nullptr;
    const Acc* gc = has_col ? ptr<Acc>(g_clse) : nullptr;
    BwdParams<In> rows{ptr<In>(q), ptr<In>(k), ptr<Acc>(rq), ptr<Acc>(rk), ptr<Acc>(scale),
                       row_key.data_ptr<int64_t>(), col_key.data_ptr<int64_t>(),
                       ptr<Acc>(lse), ptr<Acc>(g_lse), ptr<Acc>(g_pos), cl, gc,
                       nullptr, nullptr, nullptr, n, m, d, 0, 1, kChunk, 1, 1, 1,
                       Flush::kOwn, false, mask_diag,
                       n_extra > 0 ? ptr<Acc>(*xmul) : nullptr,
                       n_extra > 0 ? ptr<Acc>(*xlse) : nullptr,
                       n_extra > 0 ? ptr<Acc>(*g_xlse) : nullptr, n_extra};
    if (row_pass) {
      if (atomic_b) {
        dk_acc = at::zeros({m, d}, opts);
        rows.db = mut_ptr<Acc>(dk_acc);
        std::tie(dq_acc, dscale_rows) =
            run_bwd<In, false, true>(rows, has_col, deterministic, true, opts, stream);
      } else {
        std::tie(dq_acc, dscale_rows) =
            run_bwd<In, false, false>(rows, has_col, deterministic, true, opts, stream);
      }
    }
    if (col_pass) {
      BwdParams<In> cols = rows;
      cols.a = ptr<In>(k);
      cols.b = ptr<In>(q);
      cols.ra = ptr<Acc>(rk);
      cols.rb = ptr<Acc>(rq);
      cols.db = nullptr;
      cols.na = m;
      cols.nb = n;
      at::Tensor ds_cols;
      std::tie(dk_acc, ds_cols) =
          run_bwd<In, true, false>(cols, has_col, deterministic, !row_pass, opts, stream);
      if (!row_pass) dscale_rows = ds_cols;
    }
  });
  if (need_dq) norm_backward_cuda(q, rq, dq_acc, scale, c10::nullopt, normalize, dq);
  if (need_dk) norm_backward_cuda(k, rk, dk_acc, scale, c10::nullopt, normalize, dk);
  at::Tensor dscale = dscale_rows.defined() && dscale_rows.numel() > 0
                          ? dscale_rows.sum()
                          : at::zeros({}, opts);
  return {dq, dk, dscale};
}

}  // namespace ck_cuda
