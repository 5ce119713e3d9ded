// The softmax-family engine on the CPU: tiled, BLAS-backed, parallel over row blocks.
//
// Same contract as engines/softmax.py:
//   lse_i  = log([e^{extra_i}] + Σ_{j valid} e^{S_ij}),  pos_i = Σ_{valid, keys match} S_ij,
//   clse_j = log Σ_{i valid} e^{S_ij},                   S_ij = scale·<q̂_i, k̂_j>,
// optionally T ≤ ck::kMaxExtraLse log-sum-exps over each row's negatives (valid candidates
// whose key differs from the row's; the extra logit does not join them),
//   xlse_t,i = log Σ_{j valid, keys differ} e^{xmul_t·S_ij}   (-inf when there is none),
// and the recomputing backward (dS gains xmul_t·g_xlse_t,i·e^{xmul_t·S_ij − xlse_t,i} on
// those pairs). Memory is O((N+M)·D + threads·(tile + M)): a bm×bn tile of logits per
// thread is the only similarity-shaped storage.
//
// Layout of the work: the normalized features q̂, k̂ are formed once (O((N+M)·D), in the
// accumulation dtype, which also upcasts half inputs); a tile's logits come from one BLAS
// product into a thread-local buffer that stays in cache while its exp/max/sum work runs.
// The backward per tile: recompute cos (product 1), form dS in place, dQ̂ += dS·K̂
// (product 2), dK̂ += dSᵀ·Q̂ (product 3) into a per-partition accumulator. Partitions are a
// fixed split of the row blocks, summed in a fixed order, so gradients are bitwise
// reproducible for a given thread count. When threads × M × D accumulators would be large,
// dK̂ is instead computed by a second pass over column blocks (one more product).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../engine_host.h"
#include "../tile_math.h"
#include "blas.h"
#include "pairwise_engine_cpu.h"
#include "tiling.h"
#include "vec_math.h"

namespace ck_cpu {
namespace {

using ck::acc_type;
using ck::check_vector;
using ck::output;

// The shared checks, plus the CPU engine's own limit on D.
void check_engine_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                         const at::Tensor& rk, const at::Tensor& scale,
                         const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag) {
  ck::check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag,
                          c10::DeviceType::CPU);
  check_features(q, "q");
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <typename T>
struct Fwd {
  const T* qh;
  const T* kh;
  int64_t n, m, d, bm, bn;
  T scale;
  const int32_t* row_key;  // keys remapped to dense int32 (see dense_keys)
  const int32_t* col_key;
  const T* extra;  // nullable
  bool mask_diag, need_col;
  T* lse;
  T* pos;
  int64_t n_extra;               // extra log-sum-exps over the negatives (0: none)
  T xmul[ck::kMaxExtraLse];      // their multipliers
  T* xlse;                       // [n_extra, n]
};

// The running (max, sum) of a row block's log-sum-exps, kept in two levels: up to kGroup
// tiles into an open group (gm, gl), merged into the totals (m, l) group by group. Folding
// thousands of tile sums into one accumulator loses digits in proportion to their count
// (measured: lse off by 6e-5 at 4,300 tiles of a periodic bank, where every tile adds the
// same sum). Four bm-long arrays, consecutive from `base`.
template <typename T>
struct RowLse {
  T *m, *l, *gm, *gl;
  RowLse() = default;
  RowLse(T* base, int64_t bm) : m(base), l(base + bm), gm(base + 2 * bm), gl(base + 3 * bm) {}
  void start(int64_t r, T m0, T l0) {
    m[r] = m0;
    l[r] = l0;
    gm[r] = ck::neg_inf<T>();
    gl[r] = T(0);
  }
  // One tile of row r: its max, and sum_exp(shift) = Σ exp(x - shift) over the tile.
  template <typename SumExp>
  void add(int64_t r, T tile_max, SumExp&& sum_exp) {
    const T m_new = gm[r] > tile_max ? gm[r] : tile_max;
    const T sh = ck::lse_shift(m_new);
    gl[r] = gl[r] * exp_approx(gm[r] - sh) + sum_exp(sh);
    gm[r] = m_new;
  }
  void fold(int64_t r) {
    ck::merge_lse(m[r], l[r], gm[r], gl[r]);
    gm[r] = ck::neg_inf<T>();
    gl[r] = T(0);
  }
  T finish(int64_t r) const { return ck::finish_lse(m[r], l[r]); }
};

// One partition's forward scratch: the logit tile, the row log-sum-exps (the main one and
// the extras), the column max and shift of a tile, and the column partials (need_col).
template <typename T>
struct FwdScratch {
  T* tile;
  RowLse<T> row;
  RowLse<T> x[ck::kMaxExtraLse];
  T* colmax;
  T* shift;
  T* cm;
  T* cl;
};

// Online column statistics of one tile (bm_ rows × w columns) into (cm, cl).
template <typename T>
void update_columns(const T* tile, int64_t bm_, int64_t w, T* cm, T* cl, T* colmax, T* shift) {
  std::copy(cm, cm + w, colmax);
  for (int64_t r = 0; r < bm_; ++r) col_max(colmax, tile + r * w, w);
  for (int64_t c = 0; c < w; ++c) {
    shift[c] = ck::lse_shift(colmax[c]);
    cl[c] = cl[c] * exp_approx(cm[c] - shift[c]);
    cm[c] = colmax[c];
  }
  for (int64_t r = 0; r < bm_; ++r) col_sum_exp(cl, tile + r * w, shift, w);
}

// Extra log-sum-exp `x` of tile row r (logits s, already scaled; columns j0.. of width w,
// diag the masked column or -1): the tile's negatives, mul·s_j, into x's open group.
template <typename T>
void update_extra(const Fwd<T>& a, const T* s, int64_t j0, int64_t w, int64_t diag,
                  int32_t key, T mul, RowLse<T>& x, int64_t r) {
  const int32_t* keys = a.col_key + j0;
  T mx = ck::neg_inf<T>();
  valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
    const T v = negative_max(s + lo, keys + lo, hi - lo, mul, key);
    mx = v > mx ? v : mx;
  });
  x.add(r, mx, [&](T sh) {
    T sum = 0;
    valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
      sum += negative_sum_exp(s + lo, keys + lo, hi - lo, mul, key, sh);
    });
    return sum;
  });
}

// Rows [i0, i1) against every column, with this partition's scratch `sc` (its column
// partials cm/cl unused unless need_col). Each row's log-sum-exps are blocked (RowLse) as
// BlockSum does for the gradients: the groups fold every kGroup tiles.
template <typename T>
void forward_rows(const Fwd<T>& a, int64_t i0, int64_t i1, FwdScratch<T>& sc) {
  const int64_t bm_ = i1 - i0;
  for (int64_t r = 0; r < bm_; ++r) {
    sc.row.start(r, a.extra ? a.extra[i0 + r] : ck::neg_inf<T>(), a.extra ? T(1) : T(0));
    for (int64_t t = 0; t < a.n_extra; ++t) sc.x[t].start(r, ck::neg_inf<T>(), T(0));
    a.pos[i0 + r] = 0;
  }
  int64_t tiles_in_group = 0;
  for (int64_t j0 = 0; j0 < a.m; j0 += a.bn) {
    const int64_t w = std::min(a.bn, a.m - j0);
    gemm_nt<T>(bm_, w, a.d, a.qh + i0 * a.d, a.d, a.kh + j0 * a.d, a.d, T(0), sc.tile, w);
    for (int64_t r = 0; r < bm_; ++r) {
      const int64_t i = i0 + r;
      T* s = sc.tile + r * w;
      const int64_t diag = (a.mask_diag && i >= j0 && i < j0 + w) ? i - j0 : -1;
      T tile_max = ck::neg_inf<T>();
      valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
        const T mx = scale_max_pos(s + lo, a.col_key + j0 + lo, hi - lo, a.scale,
                                   a.row_key[i], a.pos[i]);
        tile_max = mx > tile_max ? mx : tile_max;
      });
      if (diag >= 0) s[diag] = ck::neg_inf<T>();
      sc.row.add(r, tile_max, [&](T sh) { return sum_exp(s, w, sh); });
      for (int64_t t = 0; t < a.n_extra; ++t)
        update_extra(a, s, j0, w, diag, a.row_key[i], a.xmul[t], sc.x[t], r);
    }
    if (a.need_col) update_columns(sc.tile, bm_, w, sc.cm + j0, sc.cl + j0, sc.colmax, sc.shift);
    if (++tiles_in_group == BlockSum<T>::kGroup || j0 + a.bn >= a.m) {
      for (int64_t r = 0; r < bm_; ++r) {
        sc.row.fold(r);
        for (int64_t t = 0; t < a.n_extra; ++t) sc.x[t].fold(r);
      }
      tiles_in_group = 0;
    }
  }
  for (int64_t r = 0; r < bm_; ++r) {
    a.lse[i0 + r] = sc.row.finish(r);
    for (int64_t t = 0; t < a.n_extra; ++t) a.xlse[t * a.n + i0 + r] = sc.x[t].finish(r);
  }
}

template <typename T>
void forward_impl(const Fwd<T>& a, T* clse, std::vector<at::Tensor>& work,
                  std::vector<at::Tensor>& colstat, const Split& split) {
  at::parallel_for(0, split.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      FwdScratch<T> sc;
      sc.tile = work[p].data_ptr<T>();
      sc.row = RowLse<T>(sc.tile + a.bm * a.bn, a.bm);
      sc.colmax = sc.tile + a.bm * a.bn + 4 * a.bm;
      sc.shift = sc.colmax + a.bn;
      for (int64_t t = 0; t < a.n_extra; ++t)
        sc.x[t] = RowLse<T>(sc.shift + a.bn + 4 * t * a.bm, a.bm);
      sc.cm = a.need_col ? colstat[p].data_ptr<T>() : nullptr;
      sc.cl = a.need_col ? sc.cm + a.m : nullptr;
      for (int64_t b = split.begin(p); b < split.end(p); ++b) {
        const int64_t i0 = b * a.bm;
        forward_rows(a, i0, std::min(a.n, i0 + a.bm), sc);
      }
    }
  });
  if (!a.need_col) return;
  // Column partials merged in partition order: deterministic for a given thread count.
  at::parallel_for(0, a.m, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T m = ck::neg_inf<T>(), l = 0;
      for (int64_t p = 0; p < split.parts; ++p) {
        const T* cm = colstat[p].data_ptr<T>();
        ck::merge_lse(m, l, cm[j], cm[a.m + j]);
      }
      clse[j] = ck::finish_lse(m, l);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <typename T>
struct Bwd {
  const T* qh;
  const T* kh;
  int64_t n, m, d, bm, bn;
  T scale;
  const int32_t* row_key;
  const int32_t* col_key;
  const T* lse;
  const T* g_lse;
  const T* g_pos;
  const T* clse;    // nullable (no column terms)
  const T* g_clse;  // nullable
  bool mask_diag;
  int64_t n_extra;           // extra log-sum-exps over the negatives (0: none)
  T xmul[ck::kMaxExtraLse];  // their multipliers
  const T* xlse;             // [n_extra, n], nullable when none
  const T* g_xlse;           // [n_extra, n]
};

// cos tile of rows [i0, i0+bm_) × columns [j0, j0+w) → dS tile (same layout) in `ds`: the
// row / positive / column terms, then each extra log-sum-exp's on the negatives.
// Returns nothing; adds Σ_j dS_ij·cos_ij to dscale[r] when dscale is given.
template <typename T>
void grad_tile(const Bwd<T>& a, int64_t i0, int64_t bm_, int64_t j0, int64_t w, T* cos, T* ds,
               T* dscale) {
  gemm_nt<T>(bm_, w, a.d, a.qh + i0 * a.d, a.d, a.kh + j0 * a.d, a.d, T(0), cos, w);
  const T* gc = a.g_clse ? a.g_clse + j0 : nullptr;
  const T* cl = a.clse ? a.clse + j0 : nullptr;
  for (int64_t r = 0; r < bm_; ++r) {
    const int64_t i = i0 + r;
    T* ds_r = ds + r * w;
    const T* cos_r = cos + r * w;
    const int64_t diag = (a.mask_diag && i >= j0 && i < j0 + w) ? i - j0 : -1;
    T row_dscale = 0;
    valid_ranges(w, diag, [&](int64_t lo, int64_t hi) {
      row_dscale += logit_grad_row(ds_r + lo, cos_r + lo, a.col_key + j0 + lo, hi - lo,
                                   a.scale, a.g_lse[i], a.lse[i], a.row_key[i], a.g_pos[i],
                                   gc ? gc + lo : nullptr, cl ? cl + lo : nullptr);
      for (int64_t t = 0; t < a.n_extra; ++t)
        row_dscale += extra_grad_row(ds_r + lo, cos_r + lo, a.col_key + j0 + lo, hi - lo,
                                     a.scale, a.row_key[i], a.xmul[t], a.g_xlse[t * a.n + i],
                                     a.xlse[t * a.n + i]);
    });
    if (diag >= 0) ds_r[diag] = 0;
    if (dscale) dscale[r] += row_dscale;
  }
}

// Pass over owned row blocks: dQ̂ rows (owned, plain accumulation), per-row dscale, and,
// when dk_part is given, this partition's dK̂ partial.
template <typename T>
void grad_rows(const Bwd<T>& a, int64_t i0, int64_t i1, T* cos, T* ds, T* sum_scratch, T* dq,
               T* dk_part, T* dscale) {
  const int64_t bm_ = i1 - i0;
  std::fill(dscale + i0, dscale + i1, T(0));
  BlockSum<T> dq_sum(dq + i0 * a.d, sum_scratch, bm_ * a.d);
  for (int64_t j0 = 0; j0 < a.m; j0 += a.bn) {
    const int64_t w = std::min(a.bn, a.m - j0);
    grad_tile(a, i0, bm_, j0, w, cos, ds, dscale + i0);
    gemm_nn<T>(bm_, a.d, w, ds, w, a.kh + j0 * a.d, a.d, dq_sum.beta(), dq_sum.dst(), a.d);
    dq_sum.added();
    if (dk_part)
      gemm_tn<T>(w, a.d, bm_, ds, w, a.qh + i0 * a.d, a.d, T(1), dk_part + j0 * a.d, a.d);
  }
  dq_sum.flush();
}

// Pass over owned column blocks (the deterministic second pass): dK̂ rows only.
template <typename T>
void grad_cols(const Bwd<T>& a, int64_t j0, int64_t j1, T* cos, T* ds, T* sum_scratch, T* dk) {
  const int64_t w = j1 - j0;
  BlockSum<T> dk_sum(dk + j0 * a.d, sum_scratch, w * a.d);
  for (int64_t i0 = 0; i0 < a.n; i0 += a.bm) {
    const int64_t bm_ = std::min(a.bm, a.n - i0);
    grad_tile(a, i0, bm_, j0, w, cos, ds, static_cast<T*>(nullptr));
    gemm_tn<T>(w, a.d, bm_, ds, w, a.qh + i0 * a.d, a.d, dk_sum.beta(), dk_sum.dst(), a.d);
    dk_sum.added();
  }
  dk_sum.flush();
}

template <typename T>
void backward_impl(const Bwd<T>& a, T* dq, T* dk, T* dscale, std::vector<at::Tensor>& work,
                   std::vector<at::Tensor>& dk_parts, const Split& rows, bool partials) {
  at::parallel_for(0, rows.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* cos = work[p].data_ptr<T>();
      T* ds = cos + a.bm * a.bn;
      T* sum_scratch = ds + a.bm * a.bn;
      // Partition 0 accumulates straight into dk; the others into their own partial.
      T* dk_part = partials ? (p == 0 ? dk : dk_parts[p - 1].data_ptr<T>()) : nullptr;
      for (int64_t b = rows.begin(p); b < rows.end(p); ++b) {
        const int64_t i0 = b * a.bm;
        grad_rows(a, i0, std::min(a.n, i0 + a.bm), cos, ds, sum_scratch, dq, dk_part, dscale);
      }
    }
  });
  if (partials) {
    const int64_t total = a.m * a.d;
    at::parallel_for(0, total, 1 << 14, [&](int64_t e0, int64_t e1) {
      for (int64_t p = 1; p < rows.parts; ++p) {
        const T* src = dk_parts[p - 1].data_ptr<T>();
        for (int64_t e = e0; e < e1; ++e) dk[e] += src[e];
      }
    });
    return;
  }
  const Split cols = split_blocks(a.m, a.bn);
  at::parallel_for(0, cols.parts, 1, [&](int64_t p0, int64_t p1) {
    SingleThreadedBlas blas_guard;
    for (int64_t p = p0; p < p1; ++p) {
      T* cos = work[p].data_ptr<T>();
      T* ds = cos + a.bm * a.bn;
      for (int64_t b = cols.begin(p); b < cols.end(p); ++b) {
        const int64_t j0 = b * a.bn;
        grad_cols(a, j0, std::min(a.m, j0 + a.bn), cos, ds, ds + a.bm * a.bn, dk);
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Entry points (the engine interface of engines/softmax.py)
// ---------------------------------------------------------------------------------------
at::Tensor inverse_norms(const at::Tensor& x, bool normalize) {
  check_features(x, "x");
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc = acc_type(x.scalar_type());
  auto opts = x.options().dtype(acc);
  if (!normalize) return at::ones({n}, opts);
  at::Tensor r = output({n}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "inverse_norms",
                                  [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(acc, "inverse_norms_acc", [&] {
      inverse_norms_impl<In, scalar_t>(x.data_ptr<In>(), r.data_ptr<scalar_t>(), n, d);
    });
  });
  return r;
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                const at::Tensor& rk, const at::Tensor& scale,
                                const at::Tensor& row_key, const at::Tensor& col_key,
                                const c10::optional<at::Tensor>& extra, bool mask_diag,
                                bool need_col, int64_t block_m, int64_t block_n,
                                const c10::optional<at::Tensor>& xmul) {
  check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag);
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const auto acc = acc_type(q.scalar_type());
  if (extra) check_vector(*extra, "extra", n, acc, q.device());
  const int64_t n_extra = ck::check_xmul(xmul, q);
  check_blocks(block_m, block_n);
  auto opts = q.options().dtype(acc);
  at::Tensor lse = output({n}, opts), pos = output({n}, opts);
  at::Tensor clse = need_col ? output({m}, opts) : at::empty({0}, opts);
  at::Tensor xlse = output({n_extra, n}, opts);
  if (n == 0) {
    if (need_col) clse.fill_(-std::numeric_limits<double>::infinity());
    return {lse, pos, clse, xlse};
  }
  const bool shared = q.data_ptr() == k.data_ptr() && n == m;
  at::Tensor qh = hat(q, rq), kh = shared ? qh : hat(k, rk);
  const int64_t bm = std::min(block_m, n), bn = std::min(block_n, std::max<int64_t>(m, 1));
  const Split split = split_blocks(n, bm);
  // Per partition: the logit tile, row (m, l) and group (m, l), column max and shift, and
  // the extra log-sum-exps' row and group (m, l).
  auto work = scratch(split.parts, bm * bn + 4 * bm + 2 * bn + 4 * n_extra * bm, opts);
  std::vector<at::Tensor> colstat;  // per partition: column running max (m), sum (m)
  if (need_col) {
    for (int64_t p = 0; p < split.parts; ++p)
      colstat.push_back(at::cat({at::full({m}, -std::numeric_limits<double>::infinity(), opts),
                                 at::zeros({m}, opts)}));
  }
  auto [rkey, ckey] = dense_keys(row_key, col_key);
  AT_DISPATCH_FLOATING_TYPES(acc, "softmax_engine_forward", [&] {
    using T = scalar_t;
    Fwd<T> a{qh.data_ptr<T>(), kh.data_ptr<T>(), n, m, d, bm, bn, scale.item<T>(),
             rkey.data_ptr<int32_t>(), ckey.data_ptr<int32_t>(),
             extra ? extra->data_ptr<T>() : nullptr, mask_diag, need_col,
             lse.data_ptr<T>(), pos.data_ptr<T>(), n_extra, {},
             n_extra > 0 ? xlse.data_ptr<T>() : nullptr};
    for (int64_t t = 0; t < n_extra; ++t) a.xmul[t] = xmul->data_ptr<T>()[t];
    pybind11::gil_scoped_release no_gil;
    forward_impl(a, need_col ? clse.data_ptr<T>() : nullptr, work, colstat, split);
  });
  return {lse, pos, clse, xlse};
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rq,
                                 const at::Tensor& rk, const at::Tensor& scale,
                                 const at::Tensor& row_key, const at::Tensor& col_key,
                                 const at::Tensor& lse, const at::Tensor& clse,
                                 const at::Tensor& g_lse, const at::Tensor& g_pos,
                                 const at::Tensor& g_clse, bool mask_diag, bool normalize,
                                 bool deterministic, int64_t block_m, int64_t block_n,
                                 int64_t max_partial_elements,
                                 const c10::optional<at::Tensor>& xmul,
                                 const c10::optional<at::Tensor>& xlse,
                                 const c10::optional<at::Tensor>& g_xlse) {
  check_engine_inputs(q, k, rq, rk, scale, row_key, col_key, mask_diag);
  ck::check_backward_inputs(q, k, lse, clse, g_lse, g_pos, g_clse);
  const int64_t n_extra = ck::check_extra_backward(q, xmul, xlse, g_xlse);
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  const auto acc = acc_type(q.scalar_type());
  const bool has_col = clse.numel() > 0;
  check_blocks(block_m, block_n);
  auto opts = q.options().dtype(acc);
  at::Tensor dq_hat = at::zeros({n, d}, opts), dk_hat = at::zeros({m, d}, opts);
  at::Tensor dscale_rows = output({n}, opts);
  if (n > 0 && m > 0) {
    const bool shared = q.data_ptr() == k.data_ptr() && n == m;
    at::Tensor qh = hat(q, rq), kh = shared ? qh : hat(k, rk);
    const int64_t bm = std::min(block_m, n), bn = std::min(block_n, m);
    const Split rows = split_blocks(n, bm);
    // Per-partition dK̂ partials while they stay small; else the column-block second pass.
    const bool partials = (rows.parts - 1) * m * d <= max_partial_elements;
    // Per partition: the logit tile, dS, and the two-level sum's block (BlockSum).
    auto work = scratch(std::max(rows.parts, split_blocks(m, bn).parts),
                        2 * bm * bn + std::max(bm, bn) * d, opts);
    std::vector<at::Tensor> dk_parts;  // partitions 1.. (partition 0 writes dk itself)
    for (int64_t p = 1; partials && p < rows.parts; ++p) dk_parts.push_back(at::zeros({m, d}, opts));
    auto [rkey, ckey] = dense_keys(row_key, col_key);
    AT_DISPATCH_FLOATING_TYPES(acc, "softmax_engine_backward", [&] {
      using T = scalar_t;
      Bwd<T> a{qh.data_ptr<T>(), kh.data_ptr<T>(), n, m, d, bm, bn, scale.item<T>(),
               rkey.data_ptr<int32_t>(), ckey.data_ptr<int32_t>(), lse.data_ptr<T>(),
               g_lse.data_ptr<T>(), g_pos.data_ptr<T>(),
               has_col ? clse.data_ptr<T>() : nullptr, has_col ? g_clse.data_ptr<T>() : nullptr,
               mask_diag, n_extra, {}, n_extra > 0 ? xlse->data_ptr<T>() : nullptr,
               n_extra > 0 ? g_xlse->data_ptr<T>() : nullptr};
      for (int64_t t = 0; t < n_extra; ++t) a.xmul[t] = xmul->data_ptr<T>()[t];
      pybind11::gil_scoped_release no_gil;
      backward_impl(a, dq_hat.data_ptr<T>(), dk_hat.data_ptr<T>(), dscale_rows.data_ptr<T>(),
                    work, dk_parts, rows, partials);
    });
  } else {
    dscale_rows.zero_();
  }
  (void)deterministic;  // every CPU path is deterministic for a fixed thread count
  auto [dq, dk] = finish_grads(q, k, rq, rk, dq_hat, dk_hat, scale, normalize);
  return {dq, dk, dscale_rows.sum()};
}

}  // namespace ck_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "contrastive_kernels C++ CPU engine (ATen + OpenMP, BLAS tile products)";
  m.def("inverse_norms", &ck_cpu::inverse_norms, "r (N,) = 1/max(||x_i||, eps), or ones",
        pybind11::arg("x"), pybind11::arg("normalize"));
  namespace py = pybind11;
  m.def("forward", &ck_cpu::forward,
        "(lse (N,), pos (N,), clse (M,) or empty, xlse (T,N): the log-sum-exps over each "
        "row's negatives of xmul[t]·S, (0,N) without xmul)",
        py::arg("q"), py::arg("k"), py::arg("rq"), py::arg("rk"), py::arg("scale"),
        py::arg("row_key"), py::arg("col_key"), py::arg("extra"), py::arg("mask_diag"),
        py::arg("need_col"), py::arg("block_m"), py::arg("block_n"),
        py::arg("xmul") = py::none());
  m.def("backward", &ck_cpu::backward,
        "(dq (N,D), dk (M,D), dscale 0-dim); xmul (T,), xlse (T,N), g_xlse (T,N): the extra "
        "log-sum-exps' terms (all None without them)",
        py::arg("q"), py::arg("k"), py::arg("rq"), py::arg("rk"), py::arg("scale"),
        py::arg("row_key"), py::arg("col_key"), py::arg("lse"), py::arg("clse"),
        py::arg("g_lse"), py::arg("g_pos"), py::arg("g_clse"), py::arg("mask_diag"),
        py::arg("normalize"), py::arg("deterministic"), py::arg("block_m"),
        py::arg("block_n"), py::arg("max_partial_elements"), py::arg("xmul") = py::none(),
        py::arg("xlse") = py::none(), py::arg("g_xlse") = py::none());
  m.def("pair_forward", &ck_cpu::pair_forward, "rows (N,): per-row sums of the pair terms");
  m.def("pair_backward", &ck_cpu::pair_backward,
        "(rows (N,) or empty, dq (N,D), dk (M,D), dparams (3,) = [dscale, dbias, dmargin])");
  m.def("hardest_pairs", &ck_cpu::hardest_pairs,
        "(pos (N,), neg (N,)) int64: batch-hard positive and negative per row, -1 if none");
  m.def("distance_strip", &ck_cpu::distance_strip,
        "(rows, N) squared distances of rows [row0, row0 + rows) of x to every row");
  m.def("add_rows", &ck_cpu::add_rows, "dst[idx[r]] += src[r], rows in order (in place)");
  m.def("have_fortran_blas", &ck_cpu::have_fortran_blas,
        "whether tile products use torch's BLAS directly (else at::mm)");
  m.def("_force_aten_products", [](bool on) { ck_cpu::force_aten_products().store(on); },
        "testing: compute tile products with at::mm on views (the no-Fortran-BLAS path)");
}
