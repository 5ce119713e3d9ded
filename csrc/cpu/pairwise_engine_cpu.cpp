// The pairwise engine on the CPU (SigLIP and Hadsell pair terms, batch-hard mining): the
// softmax engine's tiling — fixed partitions of row blocks, BLAS tile products into a
// thread-local tile, per-partition dK̂ partials summed in a fixed order — with a per-pair
// epilogue instead of the online log-sum-exp.
//
// A pair loss has no row statistics, so one pass over the tiles gives the loss and, given
// the upstream weights, the gradient: recompute the tile (product 1), turn it into dS in
// place, dQ̂ += dS·K̂ (product 2), dK̂ += dSᵀ·Q̂ (product 3). The interface (kinds, shapes)
// is documented in contrastive_kernels/engines/pairwise.py; the per-pair rules are
// ck::siglip_* / ck::hadsell_* (tile_math.h), vectorized in vec_math.h.
//
// Hadsell distances come from the Gram form ||q̂||² + ||k̂||² − 2<q̂, k̂>, except for the
// near-coincident pairs (ck::near_coincident), recomputed from the difference so that
// duplicates sit at exactly d = 0. Their gradient still goes through the tile products:
// the Gram entry's dS plus the diagonal terms −(Σ_j dS_ij)·q̂_i and −(Σ_i dS_ij)·k̂_j.
#include "pairwise_engine_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../engine_host.h"
#include "../tile_math.h"
#include "blas.h"
#include "tiling.h"
#include "vec_math.h"

namespace ck_cpu {
namespace {

using ck::check_vector;
using ck::output;

constexpr int64_t kSiglip = 0;
constexpr int64_t kHadsell = 1;

template <typename T>
struct Pairs {
  const T* qh;
  const T* kh;
  const T* nq;  // ||q̂_i||² and ||k̂_j||² (Hadsell only)
  const T* nk;
  int64_t n, m, d, bm, bn, kind;
  T scale, bias, margin;
  const int32_t* row_key;  // keys remapped to dense int32 (see dense_keys)
  const int32_t* col_key;
  bool mask_diag;
  const T* g_row;  // upstream weight of each row's sum; nullptr in the forward
};

// The exact squared distance of the near-coincident pairs of one tile row: row qi (norm
// nqi) against rows kh[j0 + j] (norms nk[j0 + j]) for j in [lo, hi).
template <typename T>
void fix_coincident(const T* qi, T nqi, const T* kh, const T* nk, int64_t d, int64_t j0, T* d2,
                    int64_t lo, int64_t hi) {
  for (int64_t j = lo; j < hi; ++j) {
    if (!ck::near_coincident(d2[j], nqi, nk[j0 + j])) continue;
    const T* kj = kh + (j0 + j) * d;
    T acc = 0;
    for (int64_t c = 0; c < d; ++c) {
      const T diff = qi[c] - kj[c];
      acc += diff * diff;
    }
    d2[j] = acc;
  }
}

// One tile: rows [i0, i0+bm_) × columns [j0, j0+w). The tile product goes into `tile`;
// each row's loss is added to rows[r] (when given) and, when `ds` is given, dS is formed
// there and the row's gradient sums are added to acc0[r], acc1[r] (SigLIP: Σ dS·cos and
// Σ dS; Hadsell: Σ dS and Σ g·dterm/dmargin).
template <typename T>
void pair_tile(const Pairs<T>& a, int64_t i0, int64_t bm_, int64_t j0, int64_t w, T* tile,
               T* ds, T* rows, T* acc0, T* acc1) {
  gemm_nt<T>(bm_, w, a.d, a.qh + i0 * a.d, a.d, a.kh + j0 * a.d, a.d, T(0), tile, w);
  for (int64_t r = 0; r < bm_; ++r) {
    const int64_t i = i0 + r;
    T* t = tile + r * w;
    T* ds_r = ds ? ds + r * w : nullptr;
    const int64_t diag = (a.mask_diag && i >= j0 && i < j0 + w) ? i - j0 : -1;
    const T g = a.g_row ? a.g_row[i] : T(0);
    const int32_t key = a.row_key[i];
    const int32_t* keys = a.col_key + j0;
    T loss = 0, s0 = 0, s1 = 0;
    if (a.kind == kHadsell) {
      int64_t near = sq_dist_row(t, a.nk + j0, w, a.nq[i]);
      if (diag >= 0 && ck::near_coincident(t[diag], a.nq[i], a.nk[i])) --near;
      if (near > 0)
        valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
          fix_coincident(a.qh + i * a.d, a.nq[i], a.kh, a.nk, a.d, j0, t, lo, hi);
        });
      valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
        loss += hadsell_row(ds_r ? ds_r + lo : nullptr, t + lo, keys + lo, hi - lo, key,
                            a.margin, g, s0, s1);
      });
    } else {
      valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
        loss += siglip_row(ds_r ? ds_r + lo : nullptr, t + lo, keys + lo, hi - lo, a.scale,
                           a.bias, key, g, s0, s1);
      });
    }
    if (ds_r && diag >= 0) ds_r[diag] = 0;
    if (rows) rows[r] += loss;
    if (ds) {
      acc0[r] += s0;
      acc1[r] += s1;
    }
  }
}

// colsum[j] += Σ_r ds[r, j] over a bm_ × w tile (the Hadsell column diagonal term).
template <typename T>
void add_column_sums(const T* ds, int64_t bm_, int64_t w, T* colsum) {
  for (int64_t r = 0; r < bm_; ++r) {
    const T* row = ds + r * w;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) colsum[j] += row[j];
  }
}

template <typename T>
void forward_impl(const Pairs<T>& a, T* rows, std::vector<at::Tensor>& work, const Split& split) {
  at::parallel_for(0, split.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* tile = work[p].data_ptr<T>();
      for (int64_t b = split.begin(p); b < split.end(p); ++b) {
        const int64_t i0 = b * a.bm, bm_ = std::min(a.bm, a.n - i0);
        std::fill(rows + i0, rows + i0 + bm_, T(0));
        for (int64_t j0 = 0; j0 < a.m; j0 += a.bn)
          pair_tile(a, i0, bm_, j0, std::min(a.bn, a.m - j0), tile, static_cast<T*>(nullptr),
                    rows + i0, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      }
    }
  });
}

// Where the backward accumulates: dQ̂ and the per-row sums are owned by row partitions;
// dK̂ and the column sums go to partition 0's outputs or the partials of the others.
template <typename T>
struct Grads {
  T* dq;
  T* dk;
  T* rows;    // nullable: loss rows wanted with the gradient (the fused forward)
  T* acc0;    // (N,) per-row gradient sums, see pair_tile
  T* acc1;
  T* colsum;  // (M,) Σ_i dS_ij (Hadsell)
};

template <typename T>
void grad_rows(const Pairs<T>& a, const Grads<T>& out, int64_t i0, int64_t bm_, T* tile, T* ds,
               T* sum_scratch, T* dk_part, T* colsum_part) {
  if (out.rows) std::fill(out.rows + i0, out.rows + i0 + bm_, T(0));
  BlockSum<T> dq_sum(out.dq + i0 * a.d, sum_scratch, bm_ * a.d);
  std::fill(out.acc0 + i0, out.acc0 + i0 + bm_, T(0));
  std::fill(out.acc1 + i0, out.acc1 + i0 + bm_, T(0));
  for (int64_t j0 = 0; j0 < a.m; j0 += a.bn) {
    const int64_t w = std::min(a.bn, a.m - j0);
    pair_tile(a, i0, bm_, j0, w, tile, ds, out.rows ? out.rows + i0 : nullptr, out.acc0 + i0,
              out.acc1 + i0);
    gemm_nn<T>(bm_, a.d, w, ds, w, a.kh + j0 * a.d, a.d, dq_sum.beta(), dq_sum.dst(), a.d);
    dq_sum.added();
    if (dk_part) {
      gemm_tn<T>(w, a.d, bm_, ds, w, a.qh + i0 * a.d, a.d, T(1), dk_part + j0 * a.d, a.d);
      if (a.kind == kHadsell) add_column_sums(ds, bm_, w, colsum_part + j0);
    }
  }
  dq_sum.flush();
}

// The column-block second pass (when per-partition dK̂ partials would be too large).
template <typename T>
void grad_cols(const Pairs<T>& a, const Grads<T>& out, int64_t j0, int64_t w, T* tile, T* ds,
               T* row_scratch, T* sum_scratch) {
  BlockSum<T> dk_sum(out.dk + j0 * a.d, sum_scratch, w * a.d);
  for (int64_t i0 = 0; i0 < a.n; i0 += a.bm) {
    const int64_t bm_ = std::min(a.bm, a.n - i0);
    pair_tile(a, i0, bm_, j0, w, tile, ds, static_cast<T*>(nullptr), row_scratch,
              row_scratch + a.bm);
    gemm_tn<T>(w, a.d, bm_, ds, w, a.qh + i0 * a.d, a.d, dk_sum.beta(), dk_sum.dst(), a.d);
    dk_sum.added();
    if (a.kind == kHadsell) add_column_sums(ds, bm_, w, out.colsum + j0);
  }
  dk_sum.flush();
}

template <typename T>
void backward_impl(const Pairs<T>& a, const Grads<T>& out, std::vector<at::Tensor>& work,
                   std::vector<at::Tensor>& dk_parts, std::vector<at::Tensor>& col_parts,
                   const Split& rows, bool partials) {
  at::parallel_for(0, rows.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* tile = work[p].data_ptr<T>();
      T* ds = tile + a.bm * a.bn;
      T* sum_scratch = ds + a.bm * a.bn + 2 * a.bm;
      T* dk_part = partials ? (p == 0 ? out.dk : dk_parts[p - 1].data_ptr<T>()) : nullptr;
      T* col_part = partials ? (p == 0 ? out.colsum : col_parts[p - 1].data_ptr<T>()) : nullptr;
      for (int64_t b = rows.begin(p); b < rows.end(p); ++b) {
        const int64_t i0 = b * a.bm;
        grad_rows(a, out, i0, std::min(a.bm, a.n - i0), tile, ds, sum_scratch, dk_part, col_part);
      }
    }
  });
  if (partials) {
    const int64_t total = a.m * a.d;
    at::parallel_for(0, total, 1 << 14, [&](int64_t e0, int64_t e1) {
      for (int64_t p = 1; p < rows.parts; ++p) {
        const T* src = dk_parts[p - 1].data_ptr<T>();
        for (int64_t e = e0; e < e1; ++e) out.dk[e] += src[e];
      }
    });
    for (int64_t p = 1; p < rows.parts; ++p) {
      const T* src = col_parts[p - 1].data_ptr<T>();
      for (int64_t j = 0; j < a.m; ++j) out.colsum[j] += src[j];
    }
    return;
  }
  const Split cols = split_blocks(a.m, a.bn);
  at::parallel_for(0, cols.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* tile = work[p].data_ptr<T>();
      T* ds = tile + a.bm * a.bn;
      T* row_scratch = ds + a.bm * a.bn;
      for (int64_t b = cols.begin(p); b < cols.end(p); ++b) {
        const int64_t j0 = b * a.bn;
        grad_cols(a, out, j0, std::min(a.bn, a.m - j0), tile, ds, row_scratch,
                  row_scratch + 2 * a.bm);
      }
    }
  });
}

// dx̂_i −= s_i·x̂_i: the Hadsell diagonal term (d d²_ij / d x̂_i holds 2x̂_i besides −2x̂_j).
template <typename T>
void subtract_radial(T* dx, const T* xh, const T* s, int64_t n, int64_t d) {
  at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t c = 0; c < d; ++c) dx[i * d + c] -= s[i] * xh[i * d + c];
  });
}

// ---------------------------------------------------------------------------------------
// Batch-hard mining
// ---------------------------------------------------------------------------------------
// The distance matrix is symmetric, so mining computes only the tiles (I, J) with J ≥ I
// (half a product): a tile updates its rows' running best (row side) and, off the
// diagonal, its columns' (column side, into per-partition partials merged at the end).
template <typename T>
struct Mine {
  const T* xh;
  const T* nx;
  int64_t n, d, bs;  // square tiles of bs rows
  const int32_t* key;
  int64_t* pos;  // row side: best index and value per row
  int64_t* neg;
  T* pos_val;
  T* neg_val;
};

// One partition's column-side partials: per row j, best (value, index) so far.
template <typename T>
struct ColumnBest {
  T* pv;
  int32_t* pi;
  T* nv;
  int32_t* ni;
};

// Offers candidates [lo, hi) of one distance row (keys `match` or not) to the running best
// (value, index): the tile's extreme is found vectorized; the index is located only when
// it beats the best, so the lowest index wins ties across and within tiles.
template <typename T, bool MAX>
void offer(const T* d2, const int32_t* keys, int32_t key, int64_t lo, int64_t hi, int64_t j0,
           T extreme, int64_t count, int64_t nans, T& best, int64_t& best_idx) {
  if (count == 0) return;
  const T value = nans > 0 ? std::numeric_limits<T>::quiet_NaN() : extreme;
  const bool beats = MAX ? ck::beats_max(value, best) : ck::beats_min(value, best);
  if (best_idx >= 0 && !beats) return;
  for (int64_t j = lo; j < hi; ++j) {
    if ((keys[j] == key) != MAX) continue;
    const bool hit = nans > 0 ? d2[j] != d2[j] : d2[j] == value;
    if (hit) {
      best = value;
      best_idx = j0 + j;
      return;
    }
  }
}

// Extrema of candidates [lo, hi) of one row of squared distances (after a recompute).
template <typename T>
void range_extrema(const T* d2, const int32_t* keys, int32_t key, int64_t lo, int64_t hi,
                   T& pmax, T& nmin, int32_t* stats) {
  pmax = -std::numeric_limits<T>::infinity();
  nmin = std::numeric_limits<T>::infinity();
  std::fill(stats, stats + 4, 0);
  for (int64_t j = lo; j < hi; ++j) {
    const bool match = keys[j] == key, nan = d2[j] != d2[j];
    stats[match ? 0 : 1] += 1;
    stats[match ? 2 : 3] += nan ? 1 : 0;
    if (match && d2[j] > pmax) pmax = d2[j];
    if (!match && d2[j] < nmin) nmin = d2[j];
  }
}

// Tile (I, J ≥ I): rows [i0, i0+bm_) × columns [j0, j0+w).
template <typename T>
void mine_tile(const Mine<T>& a, int64_t i0, int64_t bm_, int64_t j0, int64_t w, T* tile,
               const ColumnBest<T>& cols) {
  gemm_nt<T>(bm_, w, a.d, a.xh + i0 * a.d, a.d, a.xh + j0 * a.d, a.d, T(0), tile, w);
  const int32_t* keys = a.key + j0;
  for (int64_t r = 0; r < bm_; ++r) {
    const int64_t i = i0 + r;
    T* t = tile + r * w;
    const int64_t diag = (i >= j0 && i < j0 + w) ? i - j0 : -1;
    const int32_t key = a.key[i];
    T pmax, nmin;
    int32_t st[4];
    int64_t near = sq_dist_row(t, a.nx + j0, w, a.nx[i]);
    if (diag >= 0 && ck::near_coincident(t[diag], a.nx[i], a.nx[i])) --near;
    if (diag >= 0 || near > 0) {
      // The slow path: the own column to leave out, or near-coincident distances to
      // recompute — the hardest negative is the nearest pair, exactly where the Gram
      // form is least accurate.
      valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
        if (near > 0) fix_coincident(a.xh + i * a.d, a.nx[i], a.xh, a.nx, a.d, j0, t, lo, hi);
        range_extrema(t, keys, key, lo, hi, pmax, nmin, st);
        offer<T, true>(t, keys, key, lo, hi, j0, pmax, st[0], st[2], a.pos_val[i], a.pos[i]);
        offer<T, false>(t, keys, key, lo, hi, j0, nmin, st[1], st[3], a.neg_val[i], a.neg[i]);
      });
    } else {
      row_extrema(t, keys, w, key, pmax, nmin, st);
      offer<T, true>(t, keys, key, 0, w, j0, pmax, st[0], st[2], a.pos_val[i], a.pos[i]);
      offer<T, false>(t, keys, key, 0, w, j0, nmin, st[1], st[3], a.neg_val[i], a.neg[i]);
    }
  }
  if (j0 == i0) return;  // the diagonal tile's columns are its own rows: done above
  for (int64_t r = 0; r < bm_; ++r)
    column_offer(tile + r * w, keys, w, a.key[i0 + r], static_cast<int32_t>(i0 + r),
                 cols.pv + j0, cols.pi + j0, cols.nv + j0, cols.ni + j0);
}

// Merge candidate (cv, ci) into (bv, bi): the better value, or on a tie the lower index.
template <typename T, bool MAX>
void merge_best(T& bv, int64_t& bi, T cv, int64_t ci) {
  if (ci < 0) return;
  const bool beats = MAX ? ck::beats_max(cv, bv) : ck::beats_min(cv, bv);
  const bool tie = cv == bv || (cv != cv && bv != bv);
  if (bi < 0 || beats || (tie && ci < bi)) {
    bv = cv;
    bi = ci;
  }
}

// Row blocks paired first-with-last (block k does B - k tiles), pairs dealt to the
// partitions in turn: equal work per partition, each partition's blocks ascending.
inline std::vector<int64_t> owned_blocks(int64_t p, int64_t parts, int64_t blocks) {
  std::vector<int64_t> out;
  for (int64_t k = 0; 2 * k < blocks; ++k) {
    if (k % parts != p) continue;
    out.push_back(k);
    if (blocks - 1 - k != k) out.push_back(blocks - 1 - k);
  }
  std::sort(out.begin(), out.end());
  return out;
}

template <typename T>
void mine_impl(const Mine<T>& a, std::vector<at::Tensor>& work, std::vector<at::Tensor>& vals,
               std::vector<at::Tensor>& idxs, int64_t parts) {
  const int64_t blocks = (a.n + a.bs - 1) / a.bs;
  auto cols_of = [&](int64_t p) {
    T* v = vals[p].data_ptr<T>();
    int32_t* ix = idxs[p].data_ptr<int32_t>();
    return ColumnBest<T>{v, ix, v + a.n, ix + a.n};
  };
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* tile = work[p].data_ptr<T>();
      const ColumnBest<T> cols = cols_of(p);
      for (int64_t b : owned_blocks(p, parts, blocks)) {
        const int64_t i0 = b * a.bs, bm_ = std::min(a.bs, a.n - i0);
        for (int64_t r = 0; r < bm_; ++r) a.pos[i0 + r] = a.neg[i0 + r] = -1;
        for (int64_t j0 = i0; j0 < a.n; j0 += a.bs)
          mine_tile(a, i0, bm_, j0, std::min(a.bs, a.n - j0), tile, cols);
      }
    }
  });
  at::parallel_for(0, a.n, 1024, [&](int64_t j0, int64_t j1) {
    for (int64_t p = 0; p < parts; ++p) {
      const ColumnBest<T> c = cols_of(p);
      for (int64_t j = j0; j < j1; ++j) {
        merge_best<T, true>(a.pos_val[j], a.pos[j], c.pv[j], c.pi[j]);
        merge_best<T, false>(a.neg_val[j], a.neg[j], c.nv[j], c.ni[j]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Argument checks and shared set-up
// ---------------------------------------------------------------------------------------
void check_pair_inputs(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& params,
                       const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag,
                       int64_t block_m, int64_t block_n) {
  TORCH_CHECK(kind == kSiglip || kind == kHadsell, "kind must be 0 (SigLIP) or 1 (Hadsell), got ",
              kind);
  check_features(q, "q");
  check_vector(params, "params", 3, acc_type(q.scalar_type()), q.device());
  // The shared engine checks take a scale: params[0] stands in for it (same dtype/device).
  ck::check_engine_inputs(q, k, rq, rk, params.slice(0, 0, 1), row_key, col_key, mask_diag,
                          c10::DeviceType::CPU);
  check_blocks(block_m, block_n);
}

at::Tensor squared_norms(const at::Tensor& xh) { return xh.pow(2).sum(1).contiguous(); }

template <typename T>
Pairs<T> make_pairs(int64_t kind, const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& nq,
                    const at::Tensor& nk, const at::Tensor& params, const at::Tensor& rkey,
                    const at::Tensor& ckey, bool mask_diag, int64_t bm, int64_t bn,
                    const T* g_row) {
  const T* p = params.data_ptr<T>();
  const bool hadsell = kind == kHadsell;
  return Pairs<T>{qh.data_ptr<T>(), kh.data_ptr<T>(),
                  hadsell ? nq.data_ptr<T>() : nullptr, hadsell ? nk.data_ptr<T>() : nullptr,
                  qh.size(0), kh.size(0), qh.size(1), bm, bn, kind, p[0], p[1], p[2],
                  rkey.data_ptr<int32_t>(), ckey.data_ptr<int32_t>(), mask_diag, g_row};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Entry points (see pairwise_engine_cpu.h)
// ---------------------------------------------------------------------------------------
at::Tensor pair_forward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& params,
                        const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag,
                        int64_t block_m, int64_t block_n) {
  check_pair_inputs(kind, q, k, rq, rk, params, row_key, col_key, mask_diag, block_m, block_n);
  const int64_t n = q.size(0), m = k.size(0);
  const auto acc = acc_type(q.scalar_type());
  at::Tensor rows = output({n}, q.options().dtype(acc));
  if (n == 0) return rows;
  if (m == 0) return rows.zero_();
  const bool shared = q.data_ptr() == k.data_ptr() && n == m;
  at::Tensor qh = hat(q, rq), kh = shared ? qh : hat(k, rk);
  at::Tensor nq = squared_norms(qh), nk = shared ? nq : squared_norms(kh);
  const int64_t bm = std::min(block_m, n), bn = std::min(block_n, m);
  const Split split = split_blocks(n, bm);
  auto work = scratch(split.parts, bm * bn, q.options().dtype(acc));
  auto [rkey, ckey] = dense_keys(row_key, col_key);
  AT_DISPATCH_FLOATING_TYPES(acc, "pair_forward", [&] {
    using T = scalar_t;
    auto a = make_pairs<T>(kind, qh, kh, nq, nk, params, rkey, ckey, mask_diag, bm, bn, nullptr);
    pybind11::gil_scoped_release no_gil;
    forward_impl(a, rows.data_ptr<T>(), work, split);
  });
  return rows;
}

std::vector<at::Tensor> pair_backward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& params, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& g_row,
                                      bool mask_diag, bool normalize, bool want_rows,
                                      int64_t block_m, int64_t block_n,
                                      int64_t max_partial_elements) {
  check_pair_inputs(kind, q, k, rq, rk, params, row_key, col_key, mask_diag, block_m, block_n);
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const auto acc = acc_type(q.scalar_type());
  check_vector(g_row, "g_row", n, acc, q.device());
  auto opts = q.options().dtype(acc);
  at::Tensor dq_hat = at::zeros({n, d}, opts), dk_hat = at::zeros({m, d}, opts);
  at::Tensor rows = want_rows ? output({n}, opts) : at::empty({0}, opts);
  at::Tensor acc0 = at::zeros({n}, opts), acc1 = at::zeros({n}, opts);
  at::Tensor colsum = at::zeros({m}, opts);
  const bool shared = q.data_ptr() == k.data_ptr() && n == m;
  at::Tensor qh = hat(q, rq), kh = shared ? qh : hat(k, rk);
  if (n > 0 && m > 0) {
    at::Tensor nq = squared_norms(qh), nk = shared ? nq : squared_norms(kh);
    const int64_t bm = std::min(block_m, n), bn = std::min(block_n, m);
    const Split rows_split = split_blocks(n, bm);
    const bool partials = (rows_split.parts - 1) * m * d <= max_partial_elements;
    // Per partition: the tile, dS, (column pass) two row scratch vectors, and the
    // two-level sum's block (BlockSum).
    auto work = scratch(std::max(rows_split.parts, split_blocks(m, bn).parts),
                        2 * bm * bn + 2 * bm + std::max(bm, bn) * d, opts);
    std::vector<at::Tensor> dk_parts, col_parts;
    for (int64_t p = 1; partials && p < rows_split.parts; ++p) {
      dk_parts.push_back(at::zeros({m, d}, opts));
      col_parts.push_back(at::zeros({m}, opts));
    }
    auto [rkey, ckey] = dense_keys(row_key, col_key);
    AT_DISPATCH_FLOATING_TYPES(acc, "pair_backward", [&] {
      using T = scalar_t;
      auto a = make_pairs<T>(kind, qh, kh, nq, nk, params, rkey, ckey, mask_diag, bm, bn,
                             g_row.data_ptr<T>());
      Grads<T> out{dq_hat.data_ptr<T>(), dk_hat.data_ptr<T>(),
                   want_rows ? rows.data_ptr<T>() : nullptr, acc0.data_ptr<T>(),
                   acc1.data_ptr<T>(), colsum.data_ptr<T>()};
      pybind11::gil_scoped_release no_gil;
      backward_impl(a, out, work, dk_parts, col_parts, rows_split, partials);
    });
  } else if (want_rows) {
    rows.zero_();
  }
  at::Tensor dparams = at::zeros({3}, opts);
  if (kind == kHadsell) {
    AT_DISPATCH_FLOATING_TYPES(acc, "pair_radial", [&] {
      using T = scalar_t;
      subtract_radial(dq_hat.data_ptr<T>(), qh.data_ptr<T>(), acc0.data_ptr<T>(), n, d);
      subtract_radial(dk_hat.data_ptr<T>(), kh.data_ptr<T>(), colsum.data_ptr<T>(), m, d);
    });
    dparams[2] = acc1.sum();
  } else {
    dparams[0] = acc0.sum();
    dparams[1] = acc1.sum();
  }
  // SigLIP's dQ̂ = scale·dS·K̂: the scale enters with the normalization backward.
  at::Tensor scale = kind == kSiglip ? params.slice(0, 0, 1) : at::ones({1}, opts);
  auto [dq, dk] = finish_grads(q, k, rq, rk, dq_hat, dk_hat, scale, normalize);
  return {rows, dq, dk, dparams};
}

std::vector<at::Tensor> hardest_pairs(const at::Tensor& x, const at::Tensor& rx,
                                      const at::Tensor& key, int64_t block_m, int64_t block_n) {
  check_features(x, "x");
  const int64_t n = x.size(0);
  const auto acc = acc_type(x.scalar_type());
  check_vector(rx, "rx", n, acc, x.device());
  check_vector(key, "key", n, at::kLong, x.device());
  check_blocks(block_m, block_n);
  auto idx_opts = x.options().dtype(at::kLong);
  at::Tensor pos = output({n}, idx_opts), neg = output({n}, idx_opts);
  if (n == 0) return {pos, neg};
  TORCH_CHECK(n < (int64_t(1) << 31), "x has ", n, " rows; mining takes at most 2^31 - 1");
  at::Tensor xh = hat(x, rx), nx = squared_norms(xh);
  const auto opts = x.options().dtype(acc);
  const int64_t bs = std::min(std::min(block_m, block_n), n);
  const int64_t parts = split_blocks(n, bs).parts;
  auto work = scratch(parts, bs * bs, opts);
  std::vector<at::Tensor> vals, idxs;  // per partition: column-side best values, indices
  for (int64_t p = 0; p < parts; ++p) {
    vals.push_back(at::empty({2 * n}, opts));
    idxs.push_back(at::full({2 * n}, -1, x.options().dtype(at::kInt)));
  }
  at::Tensor row_vals = at::empty({2 * n}, opts);
  auto ids = dense_keys(key, key.slice(0, 0, 0)).first;
  AT_DISPATCH_FLOATING_TYPES(acc, "hardest_pairs", [&] {
    using T = scalar_t;
    T* rv = row_vals.data_ptr<T>();
    Mine<T> a{xh.data_ptr<T>(), nx.data_ptr<T>(), n, x.size(1), bs, ids.data_ptr<int32_t>(),
              pos.data_ptr<int64_t>(), neg.data_ptr<int64_t>(), rv, rv + n};
    pybind11::gil_scoped_release no_gil;
    mine_impl(a, work, vals, idxs, parts);
  });
  return {pos, neg};
}

namespace {
template <typename T>
void strip_impl(const T* x, const T* sq, int64_t n, int64_t d, int64_t row0, int64_t rows,
                int64_t bn, T* out) {
  const int64_t chunks = (n + bn - 1) / bn;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    SingleThreadedBlas blas_guard;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * bn, w = std::min(bn, n - j0);
      gemm_nt<T>(rows, w, d, x + row0 * d, d, x + j0 * d, d, T(0), out + j0, n);
      for (int64_t r = 0; r < rows; ++r) {
        T* t = out + r * n + j0;
        const int64_t i = row0 + r;
        if (sq_dist_row(t, sq + j0, w, sq[i]) > 0)
          fix_coincident(x + i * d, sq[i], x, sq, d, j0, t, 0, w);
      }
    }
  });
}
}  // namespace

// Rows [row0, row0 + rows) of the squared-distance matrix of x (prepared rows, acc dtype)
// with its squared norms sq: column chunks of width block_n across threads, the Gram form
// with near-coincident pairs recomputed (the triplet strips; see losses/triplet_strips.py).
at::Tensor distance_strip(const at::Tensor& x, const at::Tensor& sq, int64_t row0,
                          int64_t rows, int64_t block_n) {
  check_features(x, "x");
  const int64_t n = x.size(0);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64 (prepared rows), got ", x.scalar_type());
  check_vector(sq, "sq", n, x.scalar_type(), x.device());
  TORCH_CHECK(row0 >= 0 && rows >= 0 && row0 + rows <= n, "rows [", row0, ", ", row0 + rows,
              ") out of range for ", n, " rows of x");
  TORCH_CHECK(block_n > 0, "block_n must be positive, got ", block_n);
  at::Tensor out = output({rows, n}, x.options());
  if (rows == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "distance_strip", [&] {
    pybind11::gil_scoped_release no_gil;
    strip_impl<scalar_t>(x.data_ptr<scalar_t>(), sq.data_ptr<scalar_t>(), n, x.size(1), row0,
                         rows, block_n, out.data_ptr<scalar_t>());
  });
  return out;
}

namespace {
template <typename T>
void add_rows_impl(T* out, const int64_t* ix, const T* in, int64_t k, int64_t d) {
  // Columns split across threads, rows in order: each element's sum order is fixed.
  at::parallel_for(0, d, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < k; ++r) {
      T* o = out + ix[r] * d;
      const T* a = in + r * d;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) o[c] += a[c];
    }
  });
}
}  // namespace

// dst[idx[r]] += src[r] for each r in order: the scatter of the triplet backward (its
// selected positives and negatives). In order, so deterministic; torch's CPU index_add_
// goes through a generic scatter that is ~100× slower at this shape.
void add_rows(at::Tensor& dst, const at::Tensor& idx, const at::Tensor& src) {
  TORCH_CHECK(dst.device().is_cpu() && dst.dim() == 2 && dst.is_contiguous(),
              "dst must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(dst.scalar_type() == at::kFloat || dst.scalar_type() == at::kDouble,
              "dst must be float32 or float64, got ", dst.scalar_type());
  check_vector(idx, "idx", src.size(0), at::kLong, dst.device());
  TORCH_CHECK(src.dim() == 2 && src.size(1) == dst.size(1) && src.is_contiguous() &&
                  src.scalar_type() == dst.scalar_type() && src.device() == dst.device(),
              "src must be a contiguous (K, ", dst.size(1), ") tensor like dst");
  const int64_t n = dst.size(0), d = dst.size(1), k = src.size(0);
  const int64_t* ix = idx.data_ptr<int64_t>();
  for (int64_t r = 0; r < k; ++r)
    TORCH_CHECK(ix[r] >= 0 && ix[r] < n, "idx[", r, "] = ", ix[r], " is out of range for ", n,
                " rows");
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "add_rows", [&] {
    add_rows_impl(dst.data_ptr<scalar_t>(), ix, src.data_ptr<scalar_t>(), k, d);
  });
}

}  // namespace ck_cpu
