// The pairwise (non-softmax) engine in CUDA C++: the contract of engines/pairwise.py.
//
// Same tiles as the softmax engine (tile_products.cuh: 64×64 pair tiles, D in 32-wide
// chunks, 128 threads; 32×32 for fp64; wmma HMMA for half inputs, SIMT FMA for fp32/fp64),
// and the same backward structure: a block owns BM rows (or, TRANSPOSED, BM columns),
// recomputes each dot tile, forms dS in shared memory with one warp per owned row, and
// accumulates dA (owned: plain read-modify-write) and dB (ATOMIC_B: atomics) chunk by
// chunk. The term of a pair is a compile-time KIND:
//   SIGLIP  u = scale·c + bias, term = softplus(−z·u), dS = g_i·dterm/du
//   HADSELL d² from the Gram form (exact difference where the points nearly coincide),
//           term = d² or relu(margin − d)², dS = −2·g_i·dterm/dd² (gradient w.r.t. c)
// Kernels:
//   sq_norm_kernel          n_i = ||r_i·x_i||² (HADSELL and mining)
//   pair_fwd_kernel         rows_i = Σ_valid term_ij
//   pair_bwd_kernel         dS, dA/dB tile products, per-row partials of the scalar
//                           gradients (plain; atomic_b; transposed = the column pass of the
//                           deterministic backward)
//   hardest_kernel          batch-hard mining: per row argmax d over positives, argmin
//                           over negatives (lowest index on ties, NaN beats numbers)
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
  const Acc r = R[row];
  Acc sq = 0;
  for (int64_t c = threadIdx.x % 32; c < D; c += 32) {
    const Acc v = load_acc<Acc>(&X[row * D + c]) * r;
    sq += v * v;
  }
  sq = warp_sum(sq);
  if (threadIdx.x % 32 == 0) NSQ[row] = sq;
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
    const Acc t = load_acc<Acc>(&a[c]) * ra - load_acc<Acc>(&b[c]) * rb;
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
  Acc* rows;          // (na) Σ term per owned row, nullable
  Acc* part0;         // (na) SIGLIP: Σ dS·c (dscale); HADSELL: Σ g·dterm/dmargin. Nullable
  Acc* part1;         // (na) SIGLIP: Σ dS (dbias);     HADSELL: Σ dS (the diagonal term)
  Acc* da;            // [na, D] Σ_b dS·b̂ for the owned rows
  Acc* db;            // [nb, D] Σ_a dS·â (ATOMIC_B)
  Acc* col_sum;       // (nb) Σ_a dS (ATOMIC_B, HADSELL)
  int64_t na, nb, d;
  bool mask_diag;
};

// The epilogue of one tile: per valid pair, the term (rows) and, with GRAD, dS into sm.s,
// the per-row partials into the row arrays of sm (row_m: rows, row_l: part0, row_pos:
// part1; only the row's warp touches them). One warp per owned row, lanes across columns.
template <typename In, int KIND, bool GRAD, bool TRANS>
__device__ __forceinline__ void pair_epilogue(Smem<In>& sm, const PairParams<In>& p, int64_t a0,
                                              int64_t b0, bool want_rows) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN;
  constexpr int kRowsPerWarp = BM / kWarps, kColsPerLane = BN / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Acc scale = p.params[0], bias = p.params[1], margin = p.params[2];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const int64_t ia = a0 + r;
    const bool a_ok = ia < p.na;
    const Acc ra = a_ok ? p.ra[ia] : Acc(0);
    const Acc na2 = (KIND == kHadsell && a_ok) ? p.nsq_a[ia] : Acc(0);
    Acc term = 0, part0 = 0, part1 = 0;
#pragma unroll
    for (int t = 0; t < kColsPerLane; ++t) {
      const int c = lane + 32 * t;
      const int64_t ib = b0 + c;
      const bool valid = a_ok && ib < p.nb && !(p.mask_diag && ia == ib);
      Acc ds = 0;
      if (valid) {
        const int64_t i = TRANS ? ib : ia;  // row of S
        const int64_t j = TRANS ? ia : ib;  // column of S
        const Acc rb = p.rb[ib];
        const Acc ri = TRANS ? rb : ra, rj = TRANS ? ra : rb;
        const Acc cos = sm.s[r][c] * ri * rj;  // the same rounding in both passes
        const bool match = p.row_key[i] == p.col_key[j];
        if constexpr (KIND == kSiglip) {
          const Acc u = scale * cos + bias;
          if (want_rows) term += ck::siglip_term(u, match);
          if constexpr (GRAD) {
            ds = p.g_row[i] * ck::siglip_grad(u, match);
            if (!TRANS) {  // the scalar gradients are the row pass's
              part0 += ds * cos;
              part1 += ds;
            }
          }
        } else {
          const Acc nb2 = p.nsq_b[ib];
          const Acc ni = TRANS ? nb2 : na2, nj = TRANS ? na2 : nb2;
          Acc d2 = ck::gram_sq_dist(ni, nj, cos);
          if (ck::near_coincident(d2, ni, nj)) {
            const In* xa = p.a + ia * p.d;
            const In* xb = p.b + ib * p.d;
            d2 = TRANS ? exact_sq_dist(xb, rb, xa, ra, p.d) : exact_sq_dist(xa, ra, xb, rb, p.d);
          }
          if (want_rows) term += ck::hadsell_term(d2, match, margin);
          if constexpr (GRAD) {
            const Acc g = p.g_row[i];
            ds = Acc(-2) * (g * ck::hadsell_grad(d2, match, margin));
            if (!TRANS) part0 += g * ck::hadsell_margin_grad(d2, match, margin);
            part1 += ds;
          }
        }
      }
      if constexpr (GRAD) sm.s[r][c] = ds;  // only this lane reads or writes (r, c) here
    }
    if (want_rows) term = warp_sum(term);
    if constexpr (GRAD) {
      if (!TRANS) part0 = warp_sum(part0);
      if (!TRANS || KIND == kHadsell) part1 = warp_sum(part1);
    }
    if (lane == 0) {
      sm.row_m[r] += term;
      sm.row_l[r] += part0;
      sm.row_pos[r] += part1;
    }
  }
}

template <typename In, int KIND>
__global__ void __launch_bounds__(kThreads, 2) pair_fwd_kernel(const PairParams<In> p) {
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN;
  __shared__ Smem<In> sm;
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * BM;
  for (int r = threadIdx.x; r < BM; r += kThreads) sm.row_m[r] = sm.row_l[r] = sm.row_pos[r] = 0;
  __syncthreads();
  for (int64_t b0 = 0; b0 < p.nb; b0 += BN) {
    tile_dots(sm, p.a, p.b, a0, b0, p.na, p.nb, p.d);
    pair_epilogue<In, KIND, false, false>(sm, p, a0, b0, true);
    __syncthreads();  // sm.s is rewritten by the next tile
  }
  for (int r = threadIdx.x; r < BM; r += kThreads)
    if (a0 + r < p.na) p.rows[a0 + r] = sm.row_m[r];
}

template <typename In, int KIND, bool TRANSPOSED, bool ATOMIC_B>
__global__ void __launch_bounds__(kThreads, 2) pair_bwd_kernel(const PairParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN, BK = Smem<In>::BK;
  constexpr int LDI = Smem<In>::LDI;
  static_assert(!(TRANSPOSED && ATOMIC_B), "the column pass owns its side");
  __shared__ Smem<In> sm;
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * BM;
  const bool want_rows = p.rows != nullptr;
  for (int r = threadIdx.x; r < BM; r += kThreads) sm.row_m[r] = sm.row_l[r] = sm.row_pos[r] = 0;
  __syncthreads();
  for (int64_t b0 = 0; b0 < p.nb; b0 += BN) {
    tile_dots(sm, p.a, p.b, a0, b0, p.na, p.nb, p.d);
    pair_epilogue<In, KIND, true, TRANSPOSED>(sm, p, a0, b0, want_rows);
    __syncthreads();
    if constexpr (ATOMIC_B && KIND == kHadsell) {
      // Σ_a dS of the tile's columns (the diagonal term of dB̂), one thread per column.
      for (int c = threadIdx.x; c < BN; c += kThreads) {
        if (b0 + c >= p.nb) continue;
        Acc s = 0;
        for (int r = 0; r < BM; ++r) s += sm.s[r][c];
        atomicAdd(&p.col_sum[b0 + c], s);
      }
    }
    // Half inputs: dS is the MMA operand, staged in the input type times a power of two
    // (the softmax engine's underflow guard), unscaled exactly in fp32 by the products.
    Acc inv_sigma = 1;
    if constexpr (kTensorCores<In>) inv_sigma = stage_half_ds(sm);
    // dA (owned) += dS · B̂;  dB += dSᵀ · Â  — D in BK chunks.
    for (int64_t d0 = 0; d0 < p.d; d0 += BK) {
      load_chunk<In, BN, BK, LDI>(sm.b, p.b, b0, p.nb, p.d, d0, p.rb);
      if constexpr (ATOMIC_B) load_chunk<In, BM, BK, LDI>(sm.a, p.a, a0, p.na, p.d, d0, p.ra);
      __syncthreads();
      grad_chunk<In, false, false>(sm, p.da, a0, p.na, p.d, d0, inv_sigma);
      if constexpr (ATOMIC_B) grad_chunk<In, true, true>(sm, p.db, b0, p.nb, p.d, d0, inv_sigma);
      __syncthreads();
    }
    __syncthreads();  // sm.s (dS or staging) is rewritten by the next tile
  }
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    const int64_t ia = a0 + r;
    if (ia >= p.na) continue;
    if (want_rows) p.rows[ia] = sm.row_m[r];
    if (p.part0 != nullptr) p.part0[ia] = sm.row_l[r];
    if (p.part1 != nullptr) p.part1[ia] = sm.row_pos[r];
  }
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
  int64_t n, d;
};

template <typename In>
__global__ void __launch_bounds__(kThreads, 2) hardest_kernel(const HardParams<In> p) {
  using Acc = acc_t<In>;
  constexpr int BM = Smem<In>::BM, BN = Smem<In>::BN;
  constexpr int kRowsPerWarp = BM / kWarps, kColsPerLane = BN / 32;
  __shared__ Smem<In> sm;  // row_m / row_l: best positive / negative distance
  __shared__ int64_t pos_idx[BM], neg_idx[BM];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BM;
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    sm.row_m[r] = sm.row_l[r] = 0;
    pos_idx[r] = neg_idx[r] = -1;
  }
  __syncthreads();
  for (int64_t j0 = 0; j0 < p.n; j0 += BN) {
    tile_dots(sm, p.x, p.x, i0, j0, p.n, p.n, p.d);
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = i0 + r;
      if (i >= p.n) continue;  // warp-uniform
      const Acc ri = p.rx[i], ni = p.nsq[i];
      const int64_t key = p.key[i];
      Acc pv = 0, nv = 0;
      int64_t pi = -1, ni_ = -1;
#pragma unroll
      for (int t = 0; t < kColsPerLane; ++t) {  // ascending j within the lane
        const int c = lane + 32 * t;
        const int64_t j = j0 + c;
        if (j >= p.n || j == i) continue;
        const Acc rj = p.rx[j], nj = p.nsq[j];
        Acc d2 = ck::gram_sq_dist(ni, nj, sm.s[r][c] * ri * rj);
        // As the reference's distances: exact where the points (nearly) coincide, so a
        // duplicate is at exactly 0 and ties between duplicates go to the lowest index.
        if (ck::near_coincident(d2, ni, nj))
          d2 = exact_sq_dist(p.x + i * p.d, ri, p.x + j * p.d, rj, p.d);
        if (p.key[j] == key) {
          if (pi < 0 || ck::beats_max(d2, pv)) pv = d2, pi = j;
        } else {
          if (ni_ < 0 || ck::beats_min(d2, nv)) nv = d2, ni_ = j;
        }
      }
      warp_best<Acc, true>(pv, pi);
      warp_best<Acc, false>(nv, ni_);
      if (lane == 0) {
        // The stored best comes from earlier tiles (lower indices).
        Acc v = sm.row_m[r];
        int64_t idx = pos_idx[r];
        merge_best<Acc, true>(v, idx, pv, pi);
        sm.row_m[r] = v;
        pos_idx[r] = idx;
        v = sm.row_l[r];
        idx = neg_idx[r];
        merge_best<Acc, false>(v, idx, nv, ni_);
        sm.row_l[r] = v;
        neg_idx[r] = idx;
      }
    }
    __syncthreads();
  }
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    if (i0 + r < p.n) {
      p.pos[i0 + r] = pos_idx[r];
      p.neg[i0 + r] = neg_idx[r];
    }
  }
}

template <typename In>
unsigned blocks_of(int64_t n) {
  return static_cast<unsigned>((n + TileShape<In>::BM - 1) / TileShape<In>::BM);
}

// ||r_i·x_i||² (N,), acc dtype.
at::Tensor sq_norms(const at::Tensor& x, const at::Tensor& r) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = output({n}, r.options());
  if (n == 0) return out;
  auto stream = current_stream();
  dispatch_input(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    launch(sq_norm_kernel<In>, row_grid(n), kThreads, stream, ptr<In>(x), ptr<acc_t<In>>(r),
           mut_ptr<acc_t<In>>(out), n, d);
  });
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
  return p;
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

}  // namespace

at::Tensor pair_forward_cuda(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& rq, const at::Tensor& rk,
                             const at::Tensor& params, const at::Tensor& row_key,
                             const at::Tensor& col_key, bool mask_diag) {
  const int64_t n = q.size(0);
  at::Tensor rows = output({n}, rq.options());
  if (n == 0) return rows;
  at::Tensor nq, nk;
  std::tie(nq, nk) = hadsell_norms(kind, q, k, rq, rk);
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    PairParams<In> p = pair_params<In>(q, k, rq, rk, nq.defined() ? &nq : nullptr,
                                       nk.defined() ? &nk : nullptr, params, row_key, col_key,
                                       mask_diag);
    p.rows = mut_ptr<acc_t<In>>(rows);
    dispatch_kind(kind, [&](auto kind_tag) {
      constexpr int KIND = decltype(kind_tag)::value;
      launch(pair_fwd_kernel<In, KIND>, blocks_of<In>(n), kThreads, stream, p);
    });
  });
  return rows;
}

std::vector<at::Tensor> pair_backward_cuda(int64_t kind, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& rq,
                                           const at::Tensor& rk, const at::Tensor& params,
                                           const at::Tensor& row_key, const at::Tensor& col_key,
                                           const at::Tensor& g_row, bool mask_diag,
                                           bool normalize, bool want_rows, bool deterministic) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  auto opts = rq.options();
  at::Tensor rows = want_rows ? output({n}, opts) : at::empty({0}, opts);
  at::Tensor part0 = output({n}, opts), part1 = output({n}, opts);
  at::Tensor col_sum = at::zeros({kind == kHadsell ? m : 0}, opts);
  at::Tensor dq_acc = at::zeros({n, d}, opts), dk_acc = at::zeros({m, d}, opts);
  at::Tensor dq = output(q.sizes(), q.options()), dk = output(k.sizes(), k.options());
  at::Tensor nq, nk;
  std::tie(nq, nk) = hadsell_norms(kind, q, k, rq, rk);
  auto stream = current_stream();
  dispatch_input(q.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Acc = acc_t<In>;
    PairParams<In> p = pair_params<In>(q, k, rq, rk, nq.defined() ? &nq : nullptr,
                                       nk.defined() ? &nk : nullptr, params, row_key, col_key,
                                       mask_diag);
    p.g_row = ptr<Acc>(g_row);
    p.rows = want_rows ? mut_ptr<Acc>(rows) : nullptr;
    p.part0 = mut_ptr<Acc>(part0);
    p.part1 = mut_ptr<Acc>(part1);
    p.da = mut_ptr<Acc>(dq_acc);
    p.db = mut_ptr<Acc>(dk_acc);
    p.col_sum = kind == kHadsell ? mut_ptr<Acc>(col_sum) : nullptr;
    dispatch_kind(kind, [&](auto kind_tag) {
      constexpr int KIND = decltype(kind_tag)::value;
      if (deterministic) {
        // Two atomic-free passes, each recomputing the tiles: rows own dQ̂ and the row
        // partials, columns own dK̂ and (HADSELL) Σ_i dS_ij.
        if (n > 0)
          launch(pair_bwd_kernel<In, KIND, false, false>, blocks_of<In>(n), kThreads, stream, p);
        PairParams<In> c = p;
        std::swap(c.a, c.b);
        std::swap(c.ra, c.rb);
        std::swap(c.nsq_a, c.nsq_b);
        std::swap(c.na, c.nb);
        c.rows = nullptr;
        c.part0 = nullptr;
        c.part1 = c.col_sum;
        c.da = mut_ptr<Acc>(dk_acc);
        c.db = nullptr;
        c.col_sum = nullptr;
        if (m > 0)
          launch(pair_bwd_kernel<In, KIND, true, false>, blocks_of<In>(m), kThreads, stream, c);
      } else {
        if (n > 0)
          launch(pair_bwd_kernel<In, KIND, false, true>, blocks_of<In>(n), kThreads, stream, p);
      }
    });
  });
  // dq, dk through the normalization backward: SIGLIP dq̂ = scale·G; HADSELL
  // dq̂ = G − (Σ_j dS_ij)·q̂ (scale 1).
  const bool siglip = kind == kSiglip;
  const c10::optional<at::Tensor> scale =
      siglip ? c10::optional<at::Tensor>(params.narrow(0, 0, 1)) : c10::nullopt;
  norm_backward_cuda(q, rq, dq_acc, scale,
                     siglip ? c10::nullopt : c10::optional<at::Tensor>(part1), normalize, dq);
  norm_backward_cuda(k, rk, dk_acc, scale,
                     siglip ? c10::nullopt : c10::optional<at::Tensor>(col_sum), normalize, dk);
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
    HardParams<In> p{ptr<In>(x), ptr<Acc>(rx), ptr<Acc>(nsq), key.data_ptr<int64_t>(),
                     pos.data_ptr<int64_t>(), neg.data_ptr<int64_t>(), n, d};
    launch(hardest_kernel<In>, blocks_of<In>(n), kThreads, stream, p);
  });
  return {pos, neg};
}

}  // namespace ck_cuda
