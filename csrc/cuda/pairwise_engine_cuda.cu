// The pairwise (non-softmax) engine in CUDA C++: the contract of engines/pairwise.py.
//
// Same tiles and block structure as the softmax engine (tile_products.cuh: 128×64 pair
// tiles and 8 warps for the half types, 64×64 and 4 warps for fp32, 32×32 for fp64; the
// owned feature panel resident in shared memory (the half types' owned gradient rows in
// registers), the other side's panels streamed once with cp.async; mma.sync m16n8k16 from
// ldmatrix for half inputs, SIMT FMA for fp32/fp64; the column range split across blocks
// when the row blocks cannot fill the GPU): a block owns BM rows (or, TRANSPOSED, BM columns), recomputes each
// dot tile, forms dS in shared memory with one warp per owned row, and accumulates dA on chip
// (the owned side, blocked by kGroup tiles, written once per group: a plain store, or one
// atomic per element when the range is split) and dB (ATOMIC_B: one atomic per element and
// tile). The term of a pair is a compile-time KIND:
//   SIGLIP  u = scale·c + bias, term = softplus(−z·u), dS = g_i·dterm/du
//   HADSELL d² from the Gram form (exact difference where the points nearly coincide),
//           term = d² or relu(margin − d)², dS = −2·g_i·dterm/dd² (gradient w.r.t. c)
// Kernels:
//   sq_norm_kernel          n_i = ||r_i·x_i||² (HADSELL and mining)
//   pair_fwd_kernel         rows_i = Σ_valid term_ij (per column split)
//   pair_bwd_kernel         dS, dA/dB tile products, per-row partials of the scalar
//                           gradients (plain; atomic_b; transposed = the column pass of the
//                           deterministic backward, or the only pass when q needs no gradient)
//   sum_splits_kernel       Σ over the column splits of a per-row partial, fixed order
//   hardest_kernel          batch-hard mining: per row argmax d over positives, argmin
//                           over negatives (lowest index on ties, NaN beats numbers)
//   strip_kernel            a block of rows of the squared-distance matrix (triplet strips)
// The normalization backward is the softmax engine's (norm_backward_cuda), with the
// HADSELL diagonal term −(Σ_j dS_ij)·q̂_i folded in. Every value-deciding rule is
// from ../tile_math.h (siglip_*, gram_sq_dist, near_coincident, hadsell_*, beats_*).
#include <ATen/ATen.h>

#include <tuple>
#include <utility>
#include <vector>

#include "engine_cuda.h"
#include "launch.cuh"
#include "tile_products.cuh"

namespace ck_cuda {
namespace {

constexpr int kSiglip = 0;
constexpr int kHadsell = 1;

template <typename In>
__global__ void __launch_bounds__(kThreads)
    sq_norm_kernel(const In* __restrict__ X, const acc_t<In>* __restrict__ R,
                   acc_t<In>* __restrict__ NSQ, int64_t n, int64_t D) {
  using Acc = acc_t<In>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const Acc r = gload(&R[row]);
  Acc sq = 0;
  for (int64_t c = threadIdx.x % 32; c < D; c += 32) {
    const Acc v = gload_acc<Acc>(&X[row * D + c]) * r;
    sq += v * v;
  }
  sq = warp_sum(sq);
  if (threadIdx.x % 32 == 0) gstore(&NSQ[row], sq);
}

// out[i] = Σ_s part[s·n + i], in split order.
template <typename Acc>
__global__ void sum_splits_kernel(const Acc* __restrict__ part, Acc* __restrict__ out,
                                  int64_t splits, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Acc s = 0;
  for (int64_t k = 0; k < splits; ++k) s += gload(&part[k * n + i]);
  gstore(&out[i], s);
}

// Σ_d (ra·a_d − rb·b_d)²: the exact squared distance of two (nearly) coinciding points,
// from global memory (rare: only pairs flagged by ck::near_coincident come here).
template <typename In>
__device__ __forceinline__ acc_t<In> exact_sq_dist(const In* __restrict__ a, acc_t<In> ra,
                                                const In* __restrict__ b, acc_t<In> rb,
                                                int64_t D) {
  using Acc = acc_t<In>;
  Acc s = 0;
  for (int64_t c = 0; c < D; ++c) {
    const Acc t = gload_acc<Acc>(&a[c]) * ra - gload_acc<Acc>(&b[c]) * rb;
    s += t * t;
  }
  return s;
}

// Owned side a (rows of S, or its columns when TRANSPOSED), other side b.
template <typename In>
struct PairParams {
  using Acc = acc_t<In>;
  const In* a;
  const In* b;
  const Acc* ra;
  const Acc* rb;
  const Acc* nsq_a;   // ||â||², HADSELL only
  const Acc* nsq_b;
  const Acc* params;  // [scale, bias, margin]
  const int64_t* row_key;  // of S's rows / columns
  const int64_t* col_key;
  const Acc* g_row;   // (rows of S), backward only
  // Per owned row and column split ([splits, na]): nullable.
  Acc* rows;          // Σ term
  Acc* part0;         // SIGLIP: Σ dS·c (dscale); HADSELL: Σ g·dterm/dmargin
  Acc* part1;         // SIGLIP: Σ dS (dbias);     HADSELL: Σ dS (the diagonal term)
  Acc* da;            // [na, D] Σ_b dS·b̂ for the owned rows, or [splits, na, D] partials
  Acc* db;            // [nb, D] Σ_a dS·â (ATOMIC_B)
  Acc* col_sum;       // (nb) Σ_a dS (ATOMIC_B, HADSELL)
  int64_t na, nb, d, tiles, per_split;
  int panel, panels, vec, splits;
  Flush flush;
  bool partials;
  bool mask_diag;
};

// The epilogue of one tile: per valid pair, the term (rows) and, with GRAD, dS into sm.S;
// the per-row partials into the open group's sums (grp[0]: rows, grp[1]: part0,
// grp[2]: part1; only the row's warp touches them). One warp per owned row, lanes across
// columns. Vectors: ra/ka and va[0] = g_row (rows of S) / va[1] = nsq of the owned rows,
// rb/kb, vb[0] / vb[1] likewise of the tile's columns.
template <typename In, int KIND, bool GRAD, bool TRANS>
__device__ __forceinline__ void pair_epilogue(const Smem<In>& sm, const PairParams<In>& p,
                                              int64_t a0, int64_t b0, bool want_rows) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  constexpr int kRowsPerWarp = BM / kTileWarps<In>, kColsPerLane = BN / 32;
  const Vectors<In>& v = *sm.v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Acc scale = v.scalar[0], bias = v.scalar[1], margin = v.scalar[2];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const int64_t ia = a0 + r;
    const bool a_ok = ia < p.na;
    const Acc ra = v.ra[r];
    const Acc na2 = v.va[1][r];
    Acc term = 0, part0 = 0, part1 = 0;
#pragma unroll
    for (int t = 0; t < kColsPerLane; ++t) {
      const int c = lane + 32 * t;
      const int64_t ib = b0 + c;
      const bool valid = a_ok && ib < p.nb && !(p.mask_diag && ia == ib);
      Acc ds = 0;
      if (valid) {
        const Acc rb = v.rb[c];
        const Acc ri = TRANS ? rb : ra, rj = TRANS ? ra : rb;
        const Acc cos = sm.S(r, c) * ri * rj;  // the same rounding in both passes
        const bool match = v.ka[r] == v.kb[c];
        const Acc g_i = TRANS ? v.vb[0][c] : v.va[0][r];
        if constexpr (KIND == kSiglip) {
          const Acc u = scale * cos + bias;
          if (want_rows) term += ck::siglip_term(u, match);
          if constexpr (GRAD) {
            ds = g_i * ck::siglip_grad(u, match);
            if (!TRANS) {  // the scalar gradients are the row pass's
              part0 += ds * cos;
              part1 += ds;
            }
          }
        } else {
          const Acc nb2 = v.vb[1][c];
          const Acc ni = TRANS ? nb2 : na2, nj = TRANS ? na2 : nb2;
          Acc d2 = ck::gram_sq_dist(ni, nj, cos);
          if (ck::near_coincident(d2, ni, nj)) {
            const In* xa = p.a + ia * p.d;
            const In* xb = p.b + ib * p.d;
            d2 = TRANS ? exact_sq_dist(xb, rb, xa, ra, p.d) : exact_sq_dist(xa, ra, xb, rb, p.d);
          }
          if (want_rows) term += ck::hadsell_term(d2, match, margin);
          if constexpr (GRAD) {
            ds = Acc(-2) * (g_i * ck::hadsell_grad(d2, match, margin));
            if (!TRANS) part0 += g_i * ck::hadsell_margin_grad(d2, match, margin);
            part1 += ds;
          }
        }
      }
      if constexpr (GRAD) sm.S(r, c) = ds;  // only this lane reads or writes (r, c) here
    }
    if (want_rows) term = warp_sum(term);
    if constexpr (GRAD) {
      if (!TRANS) part0 = warp_sum(part0);
      if (!TRANS || KIND == kHadsell) part1 = warp_sum(part1);
    }
    if (lane == 0) {
      sm.v->grp[0][r] += term;
      sm.v->grp[1][r] += part0;
      sm.v->grp[2][r] += part1;
    }
  }
}

// The vectors of the owned rows (once per block) and of a tile's columns (once per tile).
template <typename In, int KIND, bool TRANS>
__device__ __forceinline__ void pair_vectors_a(const Smem<In>& sm, const PairParams<In>& p,
                                               int64_t a0) {
  using Acc = acc_t<In>;
  Vectors<In>& v = *sm.v;
  if (threadIdx.x < 3) v.scalar[threadIdx.x] = gload(&p.params[threadIdx.x]);
  load_vectors<In, true>(v, a0, p.na, p.ra, [&](int r, int64_t ia, bool ok) {
    v.ka[r] = ok ? gload(TRANS ? &p.col_key[ia] : &p.row_key[ia]) : 0;
    v.va[0][r] = ok && !TRANS && p.g_row != nullptr ? gload(&p.g_row[ia]) : Acc(0);
    v.va[1][r] = ok && KIND == kHadsell ? gload(&p.nsq_a[ia]) : Acc(0);
    for (int s = 0; s < 3; ++s) v.tot[s][r] = v.grp[s][r] = 0;
  });
}

template <typename In, int KIND, bool TRANS>
__device__ __forceinline__ void pair_vectors_b(const Smem<In>& sm, const PairParams<In>& p,
                                               int64_t b0) {
  using Acc = acc_t<In>;
  Vectors<In>& v = *sm.v;
  load_vectors<In, false>(v, b0, p.nb, p.rb, [&](int c, int64_t ib, bool ok) {
    v.kb[c] = ok ? gload(TRANS ? &p.row_key[ib] : &p.col_key[ib]) : 0;
    v.vb[0][c] = ok && TRANS && p.g_row != nullptr ? gload(&p.g_row[ib]) : Acc(0);
    v.vb[1][c] = ok && KIND == kHadsell ? gload(&p.nsq_b[ib]) : Acc(0);
  });
}

template <typename In, int KIND>
__global__ void __launch_bounds__(kTileThreads<In>, 512 / kTileThreads<In>) pair_fwd_kernel(const PairParams<In> p) {
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  CK_DYNAMIC_SMEM(smem);
  const Smem<In> sm(smem, Layout<In>{p.panel, false});
  const Operands<In> o{p.a, p.b, p.na, p.nb, p.d, p.panels, p.vec};
  const int64_t rb = blockIdx.x, a0 = rb * BM;
  const TileRange tr = tile_range(p.tiles, p.per_split, rb);
  pair_vectors_a<In, KIND, false>(sm, p, a0);
  if (p.panels == 1) {
    issue_a(sm, o, a0);
    if (tr.count > 0) issue_panel(sm, o, a0, tr.at(0) * BN, 0, false);
  }
  int in_group = 0;
  for (int64_t it = 0; it < tr.count; ++it) {
    const int64_t b0 = tr.at(it) * BN;
    tile_s(sm, o, a0, b0, 0);
    if (p.panels == 1 && it + 1 < tr.count) issue_panel(sm, o, a0, tr.at(it + 1) * BN, 0, false);
    pair_vectors_b<In, KIND, false>(sm, p, b0);
    __syncthreads();
    pair_epilogue<In, KIND, false, false>(sm, p, a0, b0, true);
    __syncthreads();  // the group sums are complete; sm.S is rewritten by the next tile
    if (++in_group == kGroup || it + 1 == tr.count) {
      fold_group<In, 3>(sm);
      in_group = 0;
    }
  }
  for (int r = threadIdx.x; r < BM; r += kTileThreads<In>)
    if (a0 + r < p.na) gstore(&p.rows[blockIdx.y * p.na + a0 + r], sm.v->tot[0][r]);
  cp_async_wait<0>();
}

template <typename In, int KIND, bool TRANSPOSED, bool ATOMIC_B>
__global__ void __launch_bounds__(kTileThreads<In>, 1) pair_bwd_kernel(const PairParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  static_assert(!(TRANSPOSED && ATOMIC_B), "the column pass owns its side");
  CK_DYNAMIC_SMEM(smem);
  const Smem<In> sm(smem, Layout<In>{p.panel, true});
  Vectors<In>& v = *sm.v;
  const Operands<In> o{p.a, p.b, p.na, p.nb, p.d, p.panels, p.vec};
  const int64_t rb = blockIdx.x, a0 = rb * BM;
  const int split = blockIdx.y, panel = blockIdx.z;
  const bool lead = panel == 0;  // the panel-0 block writes the per-row and column sums
  const int64_t c0 = static_cast<int64_t>(panel) * p.panel;
  const TileRange tr = tile_range(p.tiles, p.per_split, rb);
  const bool want_rows = p.rows != nullptr;
  Acc* da = p.da + (p.partials ? static_cast<int64_t>(split) * p.na * p.d : 0);
  pair_vectors_a<In, KIND, TRANSPOSED>(sm, p, a0);
  if (p.panels == 1) {
    issue_a(sm, o, a0);
    if (tr.count > 0) issue_panel(sm, o, a0, tr.at(0) * BN, 0, false);
  }
  GradGroup<In> group;
  for (int64_t it = 0; it < tr.count; ++it) {
    const int64_t b0 = tr.at(it) * BN;
    tile_s(sm, o, a0, b0, panel);
    pair_vectors_b<In, KIND, TRANSPOSED>(sm, p, b0);
    __syncthreads();
    pair_epilogue<In, KIND, true, TRANSPOSED>(sm, p, a0, b0, want_rows);
    __syncthreads();
    if constexpr (ATOMIC_B && KIND == kHadsell) {
      // Σ_a dS of the tile's columns (the diagonal term of dB̂), one thread per column.
      if (lead) {
        for (int c = threadIdx.x; c < BN; c += kTileThreads<In>) {
          if (b0 + c >= p.nb) continue;
          Acc s = 0;
          for (int r = 0; r < BM; ++r) s += sm.S(r, c);
          gatomic_add(&p.col_sum[b0 + c], s);
        }
      }
    }
    // dA += dS · (r_b·B); ATOMIC_B: dB += dSᵀ · (r_a·A) by atomics; the group flush and the
    // fold of the three per-row sums.
    tile_grad_step<In, ATOMIC_B, 3>(sm, o, tr, it, a0, b0, c0, da, p.db, p.flush, group);
  }
  if (tr.count == 0 && p.flush == Flush::kOwn) zero_rows<In>(da, a0, p.na, p.d, c0, p.panel);
  if (lead) {
    for (int r = threadIdx.x; r < BM; r += kTileThreads<In>) {
      const int64_t ia = a0 + r;
      if (ia >= p.na) continue;
      const int64_t at = split * p.na + ia;
      if (want_rows) gstore(&p.rows[at], v.tot[0][r]);
      if (p.part0 != nullptr) gstore(&p.part0[at], v.tot[1][r]);
      if (p.part1 != nullptr) gstore(&p.part1[at], v.tot[2][r]);
    }
  }
  cp_async_wait<0>();
}

// (value, index) of a running arg-best; index −1 = no candidate yet.
template <typename Acc, bool MAX>
__device__ __forceinline__ bool beats(Acc v, Acc best) {
  if constexpr (MAX) {
    return ck::beats_max(v, best);
  } else {
    return ck::beats_min(v, best);
  }
}

// Merge two arg-best candidates: the one with the lower index is the earlier in the scan,
// and the later one replaces it only if it strictly beats it — the sequential rule.
template <typename Acc, bool MAX>
__device__ __forceinline__ void merge_best(Acc& v, int64_t& idx, Acc ov, int64_t oidx) {
  if (oidx < 0) return;
  if (idx < 0) {
    v = ov;
    idx = oidx;
    return;
  }
  const bool other_first = oidx < idx;
  const Acc fv = other_first ? ov : v, sv = other_first ? v : ov;
  const int64_t fi = other_first ? oidx : idx, si = other_first ? idx : oidx;
  const bool later_wins = beats<Acc, MAX>(sv, fv);
  v = later_wins ? sv : fv;
  idx = later_wins ? si : fi;
}

template <typename Acc, bool MAX>
__device__ __forceinline__ void warp_best(Acc& v, int64_t& idx) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Acc ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
    merge_best<Acc, MAX>(v, idx, ov, oi);
  }
}

template <typename In>
struct HardParams {
  using Acc = acc_t<In>;
  const In* x;
  const Acc* rx;
  const Acc* nsq;
  const int64_t* key;
  int64_t* pos;
  int64_t* neg;
  int64_t n, d, tiles;
  int panel, panels, vec;
};

template <typename In>
__global__ void __launch_bounds__(kTileThreads<In>, 512 / kTileThreads<In>) hardest_kernel(const HardParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = TileShape<In>::BM, BN = TileShape<In>::BN;
  constexpr int kRowsPerWarp = BM / kTileWarps<In>, kColsPerLane = BN / 32;
  CK_DYNAMIC_SMEM(smem);
  const Smem<In> sm(smem, Layout<In>{p.panel, false});
  Vectors<In>& v = *sm.v;  // tot[0] / tot[1]: best positive / negative distance
  __shared__ int64_t best[2][BM];  // ... and its index
  const Operands<In> o{p.x, p.x, p.n, p.n, p.d, p.panels, p.vec};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BM;
  load_vectors<In, true>(v, i0, p.n, p.rx, [&](int r, int64_t i, bool ok) {
    v.va[0][r] = ok ? gload(&p.nsq[i]) : Acc(0);
    v.ka[r] = ok ? gload(&p.key[i]) : 0;
    v.tot[0][r] = v.tot[1][r] = 0;
    best[0][r] = best[1][r] = -1;
  });
  if (p.panels == 1) {
    issue_a(sm, o, i0);
    if (p.tiles > 0) issue_panel(sm, o, i0, 0, 0, false);
  }
  for (int64_t t = 0; t < p.tiles; ++t) {  // ascending columns
    const int64_t j0 = t * BN;
    tile_s(sm, o, i0, j0, 0);
    if (p.panels == 1 && t + 1 < p.tiles) issue_panel(sm, o, i0, j0 + BN, 0, false);
    load_vectors<In, false>(v, j0, p.n, p.rx, [&](int c, int64_t j, bool ok) {
      v.vb[0][c] = ok ? gload(&p.nsq[j]) : Acc(0);
      v.kb[c] = ok ? gload(&p.key[j]) : 0;
    });
    __syncthreads();
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = i0 + r;
      if (i >= p.n) continue;  // warp-uniform
      const Acc ri = v.ra[r], ni = v.va[0][r];
      const int64_t key = v.ka[r];
      Acc pv = 0, nv = 0;
      int64_t pi = -1, ni_ = -1;
#pragma unroll
      for (int tt = 0; tt < kColsPerLane; ++tt) {  // ascending j within the lane
        const int c = lane + 32 * tt;
        const int64_t j = j0 + c;
        if (j >= p.n || j == i) continue;
        const Acc rj = v.rb[c], nj = v.vb[0][c];
        Acc d2 = ck::gram_sq_dist(ni, nj, sm.S(r, c) * ri * rj);
        // As the reference's distances: exact where the points (nearly) coincide, so a
        // duplicate is at exactly 0 and ties between duplicates go to the lowest index.
        if (ck::near_coincident(d2, ni, nj))
          d2 = exact_sq_dist(p.x + i * p.d, ri, p.x + j * p.d, rj, p.d);
        if (v.kb[c] == key) {
          if (pi < 0 || ck::beats_max(d2, pv)) pv = d2, pi = j;
        } else {
          if (ni_ < 0 || ck::beats_min(d2, nv)) nv = d2, ni_ = j;
        }
      }
      warp_best<Acc, true>(pv, pi);
      warp_best<Acc, false>(nv, ni_);
      if (lane == 0) {
        // The stored best comes from earlier tiles (lower indices).
        Acc bv = v.tot[0][r];
        int64_t idx = best[0][r];
        merge_best<Acc, true>(bv, idx, pv, pi);
        v.tot[0][r] = bv;
        best[0][r] = idx;
        bv = v.tot[1][r];
        idx = best[1][r];
        merge_best<Acc, false>(bv, idx, nv, ni_);
        v.tot[1][r] = bv;
        best[1][r] = idx;
      }
    }
    __syncthreads();
  }
  for (int r = threadIdx.x; r < BM; r += kTileThreads<In>) {
    if (i0 + r < p.n) {
      gstore(&p.pos[i0 + r], best[0][r]);
      gstore(&p.neg[i0 + r], best[1][r]);
    }
  }
  cp_async_wait<0>();
}

// ||r_i·x_i||² (N,), acc dtype.
at::Tensor sq_norms(const at::Tensor& x, const at::Tensor& r) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = output({n}, r.options());
  if (n == 0) return out;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    launch<sq_norm_kernel<In>>(row_grid(n), kThreads, 0, stream, ptr<In>(x), ptr<acc_t<In>>(r),
                               mut_ptr<acc_t<In>>(out), n, d);
  });
  return out;
}

// Σ over the splits of a [splits, n] partial (the partial itself when there is one split).
at::Tensor sum_splits(const at::Tensor& part, cudaStream_t stream) {
  if (part.size(0) == 1) return part.select(0, 0);
  const int64_t splits = part.size(0), n = part.size(1);
  at::Tensor out = output({n}, part.options());
  if (n == 0) return out;
  if (part.scalar_type() == at::kDouble) {
    launch<sum_splits_kernel<double>>(static_cast<unsigned>((n + 255) / 256), 256, 0, stream,
                                      ptr<double>(part), mut_ptr<double>(out), splits, n);
  } else {
    launch<sum_splits_kernel<float>>(static_cast<unsigned>((n + 255) / 256), 256, 0, stream,
                                     ptr<float>(part), mut_ptr<float>(out), splits, n);
  }
  return out;
}

template <typename In>
PairParams<In> pair_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                           const at::Tensor& rk, const at::Tensor* nq, const at::Tensor* nk,
                           const at::Tensor& params, const at::Tensor& row_key,
                           const at::Tensor& col_key, bool mask_diag) {
  using Acc = acc_t<In>;
  PairParams<In> p{};
  p.a = ptr<In>(q);
  p.b = ptr<In>(k);
  p.ra = ptr<Acc>(rq);
  p.rb = ptr<Acc>(rk);
  p.nsq_a = nq != nullptr ? ptr<Acc>(*nq) : nullptr;
  p.nsq_b = nk != nullptr ? ptr<Acc>(*nk) : nullptr;
  p.params = ptr<Acc>(params);
  p.row_key = row_key.data_ptr<int64_t>();
  p.col_key = col_key.data_ptr<int64_t>();
  p.na = q.size(0);
  p.nb = k.size(0);
  p.d = q.size(1);
  p.mask_diag = mask_diag;
  p.flush = Flush::kOwn;
  return p;
}

template <typename In>
void apply_plan(PairParams<In>& p, const Plan& pl) {
  p.tiles = pl.tiles;
  p.per_split = pl.per_split;
  p.panel = pl.panel;
  p.panels = pl.panels;
  p.vec = pl.vec;
  p.splits = pl.splits;
}

// Squared norms of q̂ and k̂ for HADSELL (shared when q and k are one tensor).
std::pair<at::Tensor, at::Tensor> hadsell_norms(int64_t kind, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& rq,
                                                const at::Tensor& rk) {
  if (kind != kHadsell) return {};
  at::Tensor nq = sq_norms(q, rq);
  at::Tensor nk = (q.is_same(k) && rq.is_same(rk)) ? nq : sq_norms(k, rk);
  return {nq, nk};
}

template <typename Fn>
void dispatch_kind(int64_t kind, Fn&& fn) {
  if (kind == kSiglip) {
    fn(std::integral_constant<int, kSiglip>{});
  } else {
    fn(std::integral_constant<int, kHadsell>{});
  }
}

// Partial outputs of one backward pass.
struct PairPass {
  at::Tensor da, rows, part0, part1;  // da: [na, D] or [splits, na, D]; the rest [splits, na]
};

// One backward pass owning p.a's rows: plans, allocates the gradient rows (plain, zeroed
// for atomics, or per-split partials when deterministic) and the requested per-row partials,
// launches. want: rows, part0, part1.
template <typename In, int KIND, bool TRANSPOSED, bool ATOMIC_B>
PairPass run_pair_bwd(PairParams<In> p, bool deterministic, bool want_rows, bool want0,
                      bool want1, const at::TensorOptions& opts, cudaStream_t stream) {
  constexpr auto kernel = pair_bwd_kernel<In, KIND, TRANSPOSED, ATOMIC_B>;
  using Acc = acc_t<In>;
  const Plan pl = make_plan<In, kernel>(p.na, p.nb, p.d, true, p.a, p.b);
  apply_plan(p, pl);
  const bool split = pl.splits > 1;
  PairPass out;
  if (split && deterministic) {
    out.da = at::empty({pl.splits, p.na, p.d}, opts);
  } else if (split) {
    out.da = at::zeros({p.na, p.d}, opts);
  } else {
    out.da = at::empty({p.na, p.d}, opts);
  }
  p.flush = split && !deterministic ? Flush::kAtomic : Flush::kOwn;
  p.partials = split && deterministic;
  p.da = mut_ptr<Acc>(out.da);
  auto partial = [&](bool want, at::Tensor& t) -> Acc* {
    if (!want) return nullptr;
    t = at::empty({pl.splits, p.na}, opts);
    return mut_ptr<Acc>(t);
  };
  p.rows = partial(want_rows, out.rows);
  p.part0 = partial(want0, out.part0);
  p.part1 = partial(want1, out.part1);
  if (p.na > 0) launch<kernel>(pl.grid(), kTileThreads<In>, pl.smem, stream, p);
  return out;
}

}  // namespace

at::Tensor pair_forward_cuda(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& rq, const at::Tensor& rk,
                             const at::Tensor& params, const at::Tensor& row_key,
                             const at::Tensor& col_key, bool mask_diag) {
  const int64_t n = q.size(0);
  if (n == 0) return output({n}, rq.options());
  at::Tensor nq, nk, part;
  std::tie(nq, nk) = hadsell_norms(kind, q, k, rq, rk);
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    PairParams<In> p = pair_params<In>(q, k, rq, rk, nq.defined() ? &nq : nullptr,
                                       nk.defined() ? &nk : nullptr, params, row_key, col_key,
                                       mask_diag);
    dispatch_kind(kind, [&](auto kind_tag) {
      constexpr int KIND = decltype(kind_tag)::value;
      constexpr auto kernel = pair_fwd_kernel<In, KIND>;
      const Plan pl = make_plan<In, kernel>(n, k.size(0), q.size(1), false, p.a, p.b);
      apply_plan(p, pl);
      part = pl.splits > 1 ? at::empty({pl.splits, n}, rq.options()) : output({1, n}, rq.options());
      p.rows = mut_ptr<acc_t<In>>(part);
      launch<kernel>(pl.grid(), kTileThreads<In>, pl.smem, stream, p);
    });
  });
  return sum_splits(part, stream).contiguous();
}

std::vector<at::Tensor> pair_backward_cuda(int64_t kind, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& rq,
                                           const at::Tensor& rk, const at::Tensor& params,
                                           const at::Tensor& row_key, const at::Tensor& col_key,
                                           const at::Tensor& g_row, bool mask_diag,
                                           bool normalize, bool want_rows, bool deterministic,
                                           bool need_dq, bool need_dk) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  auto opts = rq.options();
  // A gradient not needed comes back as a (0, D) tensor (the CPU engine's contract).
  at::Tensor dq = need_dq ? output(q.sizes(), q.options()) : at::empty({0, d}, q.options());
  at::Tensor dk = need_dk ? output(k.sizes(), k.options()) : at::empty({0, d}, k.options());
  at::Tensor nq, nk;
  std::tie(nq, nk) = hadsell_norms(kind, q, k, rq, rk);
  const bool siglip = kind == kSiglip;
  // The row pass always runs (it owns the row terms and the scalar gradients' partials);
  // dK by atomics in it, or by its own column pass when deterministic; not at all when the
  // keys need no gradient.
  const bool atomic_b = need_dk && !deterministic;
  const bool col_pass = need_dk && deterministic;
  PairPass rows_pass, cols_pass;
  at::Tensor dk_acc, col_sum;
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    PairParams<In> p = pair_params<In>(q, k, rq, rk, nq.defined() ? &nq : nullptr,
                                       nk.defined() ? &nk : nullptr, params, row_key, col_key,
                                       mask_diag);
    p.g_row = ptr<Acc>(g_row);
    dispatch_kind(kind, [&](auto kind_tag) {
      constexpr int KIND = decltype(kind_tag)::value;
      if (atomic_b) {
        dk_acc = at::zeros({m, d}, opts);
        p.db = mut_ptr<Acc>(dk_acc);
        if (KIND == kHadsell) {
          col_sum = at::zeros({m}, opts);
          p.col_sum = mut_ptr<Acc>(col_sum);
        }
        rows_pass = run_pair_bwd<In, KIND, false, true>(p, deterministic, want_rows, true, true,
                                                        opts, stream);
      } else {
        rows_pass = run_pair_bwd<In, KIND, false, false>(p, deterministic, want_rows, true, true,
                                                         opts, stream);
      }
      if (col_pass) {
        // The column pass owns dK̂ and (HADSELL) Σ_i dS_ij as its part1.
        PairParams<In> c = p;
        std::swap(c.a, c.b);
        std::swap(c.ra, c.rb);
        std::swap(c.nsq_a, c.nsq_b);
        std::swap(c.na, c.nb);
        c.db = nullptr;
        c.col_sum = nullptr;
        cols_pass = run_pair_bwd<In, KIND, true, false>(c, deterministic, false, false,
                                                        KIND == kHadsell, opts, stream);
        dk_acc = cols_pass.da;
        if (KIND == kHadsell) col_sum = m > 0 ? sum_splits(cols_pass.part1, stream) : at::zeros({0}, opts);
      }
    });
  });
  at::Tensor rows = want_rows ? (n > 0 ? sum_splits(rows_pass.rows, stream).contiguous()
                                       : output({0}, opts))
                              : at::empty({0}, opts);
  at::Tensor part0 = n > 0 ? sum_splits(rows_pass.part0, stream) : at::zeros({0}, opts);
  at::Tensor part1 = n > 0 ? sum_splits(rows_pass.part1, stream) : at::zeros({0}, opts);
  // dq, dk through the normalization backward: SIGLIP dq̂ = scale·G; HADSELL
  // dq̂ = G − (Σ_j dS_ij)·q̂ (scale 1).
  const c10::optional<at::Tensor> scale =
      siglip ? c10::optional<at::Tensor>(params.narrow(0, 0, 1)) : c10::nullopt;
  if (need_dq && n > 0)
    norm_backward_cuda(q, rq, rows_pass.da, scale,
                       siglip ? c10::nullopt : c10::optional<at::Tensor>(part1.contiguous()),
                       normalize, dq);
  if (need_dk && m > 0)
    norm_backward_cuda(k, rk, dk_acc, scale,
                       siglip ? c10::nullopt : c10::optional<at::Tensor>(col_sum.contiguous()),
                       normalize, dk);
  // [dscale, dbias, dmargin]: fixed-order torch reductions of the per-row partials.
  at::Tensor dparams = at::zeros({3}, opts);
  if (siglip) {
    dparams.select(0, 0).copy_(part0.sum());
    dparams.select(0, 1).copy_(part1.sum());
  } else {
    dparams.select(0, 2).copy_(part0.sum());
  }
  return {rows, dq, dk, dparams};
}

namespace {

// The triplet strips (losses/triplet_strips.py): d²(x_{row0+r}, x_j) for a block of rows
// against every row of prepared fp32/fp64 rows x. A 16×16 thread tile per block, the dot
// products staged through shared memory kStripK columns at a time (plain SIMT: the strip's
// consumer, a per-row sort, dominates its cost); near-coincident pairs recomputed from the
// difference, as every distance in this engine.
constexpr int kStrip = 16, kStripK = 16;

template <typename T>
__global__ void __launch_bounds__(kStrip * kStrip)
    strip_kernel(const T* __restrict__ X, const T* __restrict__ NSQ, T* __restrict__ OUT,
                 int64_t n, int64_t D, int64_t row0, int64_t rows) {
  __shared__ T a_s[kStrip][kStripK + 1];  // +1: no bank conflicts on the transposed reads
  __shared__ T b_s[kStrip][kStripK + 1];
  const int tr = threadIdx.y, tc = threadIdx.x;
  const int64_t r = static_cast<int64_t>(blockIdx.y) * kStrip + tr;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kStrip + tc;
  const int64_t ra0 = row0 + static_cast<int64_t>(blockIdx.y) * kStrip;
  const int64_t jb0 = static_cast<int64_t>(blockIdx.x) * kStrip;
  T dot = 0;
  for (int64_t c0 = 0; c0 < D; c0 += kStripK) {
    // Thread (tr, tc) stages column c0 + tc of row tr of both tiles.
    const int64_t c = c0 + tc;
    const int64_t ia = ra0 + tr, ib = jb0 + tr;
    a_s[tr][tc] = (c < D && ia < row0 + rows) ? gload(&X[ia * D + c]) : T(0);
    b_s[tr][tc] = (c < D && ib < n) ? gload(&X[ib * D + c]) : T(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStripK; ++k) dot += a_s[tr][k] * b_s[tc][k];
    __syncthreads();
  }
  if (r >= rows || j >= n) return;
  const int64_t i = row0 + r;
  const T ni = gload(&NSQ[i]), nj = gload(&NSQ[j]);
  T d2 = ck::gram_sq_dist(ni, nj, dot);
  if (ck::near_coincident(d2, ni, nj)) d2 = exact_sq_dist(X + i * D, T(1), X + j * D, T(1), D);
  gstore(&OUT[r * n + j], d2);
}

}  // namespace

at::Tensor distance_strip_cuda(const at::Tensor& x, const at::Tensor& nsq, int64_t row0,
                               int64_t rows) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = ck::output({rows, n}, x.options());
  if (rows == 0 || n == 0) return out;
  auto stream = current_stream();
  const dim3 grid(static_cast<unsigned>((n + kStrip - 1) / kStrip),
                  static_cast<unsigned>((rows + kStrip - 1) / kStrip));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "distance_strip", [&] {
    launch<strip_kernel<scalar_t>>(grid, dim3(kStrip, kStrip), 0, stream, ptr<scalar_t>(x),
                                   ptr<scalar_t>(nsq), out.data_ptr<scalar_t>(), n, d, row0, rows);
  });
  return out;
}

std::vector<at::Tensor> hardest_pairs_cuda(const at::Tensor& x, const at::Tensor& rx,
                                           const at::Tensor& key) {
  const int64_t n = x.size(0), d = x.size(1);
  auto iopts = key.options();
  // Poisoned (an impossible index) under CONTRASTIVE_KERNELS_POISON=1, like output().
  auto index_output = [&]() {
    return ck::poison_outputs() ? at::full({n}, -7, iopts) : at::empty({n}, iopts);
  };
  at::Tensor pos = index_output(), neg = index_output();
  if (n == 0) return {pos, neg};
  at::Tensor nsq = sq_norms(x, rx);
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    constexpr auto kernel = hardest_kernel<In>;
    const Plan pl = make_plan<In, kernel>(n, n, d, false, x.data_ptr(), x.data_ptr(), 0, false);
    HardParams<In> p{ptr<In>(x), ptr<Acc>(rx), ptr<Acc>(nsq), key.data_ptr<int64_t>(),
                     pos.data_ptr<int64_t>(), neg.data_ptr<int64_t>(), n, d, pl.tiles,
                     pl.panel, pl.panels, pl.vec};
    launch<kernel>(pl.grid(), kTileThreads<In>, pl.smem, stream, p);
  });
  return {pos, neg};
}

}  // namespace ck_cuda
