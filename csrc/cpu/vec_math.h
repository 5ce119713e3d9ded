// The element-wise work of a tile (scale, max, exp-sum, gradient of the logits), written as
// simple loops the compiler vectorizes. On x86-64 each hot loop is compiled twice
// (target_clones): an AVX2+FMA version picked at load time where the CPU has it, and a
// baseline SSE2 version, so the extension runs on any x86-64 machine.
//
// exp for float is a Cody–Waite reduction with a degree-6 polynomial (Cephes expf, within
// 2 ulp on its range) because std::exp does not vectorize; double keeps std::exp — the
// fp64 path is the exact one, not the fast one.
#pragma once

#include <cmath>
#include <cstdint>
#include <bit>
#include <limits>

#include "../tile_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CK_VEC __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CK_VEC
#endif

// The loop bodies below are templates shared by the float (cloned) and double entry
// points; they must be inlined into each clone, or they would be compiled once for the
// baseline target and the AVX2/AVX-512 clones would call unvectorized code.
#if defined(__GNUC__)
#define CK_INLINE inline __attribute__((always_inline))
#else
#define CK_INLINE inline
#endif

namespace ck_cpu {

CK_INLINE float exp_approx(float x) {
  // Below ln(FLT_MIN) the result flushes to 0 (and -inf, a masked logit, gives exactly 0);
  // the callers only pass x ≤ 0 (a logit minus its running max) or NaN, which propagates.
  constexpr float kLo = -87.3365478515625f;
  constexpr float kLog2e = 1.44269504088896341f;
  // Round to nearest by adding and subtracting 1.5·2^23 (no floor call, so it vectorizes).
  constexpr float kRound = 12582912.0f;
  const float fx = (x * kLog2e + kRound) - kRound;
  float r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float fe = fx < -126.0f ? -126.0f : fx;
  fe = fe > 127.0f ? 127.0f : fe;
  const float pow2 = std::bit_cast<float>((static_cast<int32_t>(fe) + 127) << 23);
  return x < kLo ? 0.0f : p * pow2;
}

inline double exp_approx(double x) { return std::exp(x); }

// One pass over a tile row of raw cosines: s_j = a·s_j in place; returns the row max and
// adds Σ_{keys match} s_j to pos. Keys are int32 (remapped once per call) so the compare
// vectorizes at the float width.
template <typename T>
CK_INLINE T scale_max_pos_impl(T* s, const int32_t* keys, int64_t n, T a, int32_t key, T& pos) {
  T m = ck::neg_inf<T>();
  T p = 0;
#pragma omp simd reduction(max : m) reduction(+ : p)
  for (int64_t j = 0; j < n; ++j) {
    const T v = s[j] * a;
    s[j] = v;
    m = v > m ? v : m;
    p += keys[j] == key ? v : T(0);
  }
  pos += p;
  return m;
}
CK_VEC inline float scale_max_pos(float* s, const int32_t* keys, int64_t n, float a,
                                  int32_t key, float& pos) {
  return scale_max_pos_impl(s, keys, n, a, key, pos);
}
inline double scale_max_pos(double* s, const int32_t* keys, int64_t n, double a, int32_t key,
                            double& pos) {
  return scale_max_pos_impl(s, keys, n, a, key, pos);
}

// Σ_j exp(s_j - shift)
template <typename T>
CK_INLINE T sum_exp_impl(const T* s, int64_t n, T shift) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += exp_approx(s[j] - shift);
  return acc;
}
CK_VEC inline float sum_exp(const float* s, int64_t n, float shift) {
  return sum_exp_impl(s, n, shift);
}
inline double sum_exp(const double* s, int64_t n, double shift) {
  return sum_exp_impl(s, n, shift);
}

// colmax_j = max(colmax_j, s_j)
template <typename T>
CK_INLINE void col_max_impl(T* colmax, const T* s, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) colmax[j] = s[j] > colmax[j] ? s[j] : colmax[j];
}
CK_VEC inline void col_max(float* colmax, const float* s, int64_t n) {
  col_max_impl(colmax, s, n);
}
inline void col_max(double* colmax, const double* s, int64_t n) { col_max_impl(colmax, s, n); }

// colsum_j += exp(s_j - shift_j)
template <typename T>
CK_INLINE void col_sum_exp_impl(T* colsum, const T* s, const T* shift, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) colsum[j] += exp_approx(s[j] - shift[j]);
}
CK_VEC inline void col_sum_exp(float* colsum, const float* s, const float* shift, int64_t n) {
  col_sum_exp_impl(colsum, s, shift, n);
}
inline void col_sum_exp(double* colsum, const double* s, const double* shift, int64_t n) {
  col_sum_exp_impl(colsum, s, shift, n);
}

// dS for one tile row (ENGINE.md), from raw cosines; returns Σ_j dS_j·cos_j (the row's
// share of the scale gradient):
//   dS_j = g·exp(scale·cos_j - lse) + [key_j == key]·g_pos [+ gc_j·exp(scale·cos_j - clse_j)]
template <typename T>
CK_INLINE T logit_grad_row_impl(T* ds, const T* cos, const int32_t* keys, int64_t n, T scale,
                             T g, T lse, int32_t key, T g_pos, const T* gc, const T* clse) {
  T acc = 0;
  if (gc == nullptr) {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      const T d = ck::logit_grad(g, exp_approx(scale * cos[j] - lse), keys[j] == key, g_pos,
                                 T(0), T(0));
      ds[j] = d;
      acc += d * cos[j];
    }
    return acc;
  }
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    const T s = scale * cos[j];
    const T d = ck::logit_grad(g, exp_approx(s - lse), keys[j] == key, g_pos, gc[j],
                               exp_approx(s - clse[j]));
    ds[j] = d;
    acc += d * cos[j];
  }
  return acc;
}
CK_VEC inline float logit_grad_row(float* ds, const float* cos, const int32_t* keys, int64_t n,
                                   float scale, float g, float lse, int32_t key, float g_pos,
                                   const float* gc, const float* clse) {
  return logit_grad_row_impl(ds, cos, keys, n, scale, g, lse, key, g_pos, gc, clse);
}
inline double logit_grad_row(double* ds, const double* cos, const int32_t* keys, int64_t n,
                             double scale, double g, double lse, int32_t key, double g_pos,
                             const double* gc, const double* clse) {
  return logit_grad_row_impl(ds, cos, keys, n, scale, g, lse, key, g_pos, gc, clse);
}

// The extra log-sum-exps over a row's negatives (ck::kMaxExtraLse): x_j = mul·s_j where
// keys[j] != key, -inf elsewhere (a masked product, not mul·(-inf): mul may be 0 or
// negative). The max drops NaN like the row max does; the sum keeps it.
template <typename T>
CK_INLINE T negative_max_impl(const T* s, const int32_t* keys, int64_t n, T mul, int32_t key) {
  T m = ck::neg_inf<T>();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    const T v = keys[j] != key ? mul * s[j] : ck::neg_inf<T>();
    m = v > m ? v : m;
  }
  return m;
}
CK_VEC inline float negative_max(const float* s, const int32_t* keys, int64_t n, float mul,
                                 int32_t key) {
  return negative_max_impl(s, keys, n, mul, key);
}
inline double negative_max(const double* s, const int32_t* keys, int64_t n, double mul,
                           int32_t key) {
  return negative_max_impl(s, keys, n, mul, key);
}

// Σ_{keys[j] != key} exp(mul·s_j - shift)
template <typename T>
CK_INLINE T negative_sum_exp_impl(const T* s, const int32_t* keys, int64_t n, T mul,
                                  int32_t key, T shift) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    const T e = exp_approx(mul * s[j] - shift);
    acc += keys[j] != key ? e : T(0);
  }
  return acc;
}
CK_VEC inline float negative_sum_exp(const float* s, const int32_t* keys, int64_t n, float mul,
                                     int32_t key, float shift) {
  return negative_sum_exp_impl(s, keys, n, mul, key, shift);
}
inline double negative_sum_exp(const double* s, const int32_t* keys, int64_t n, double mul,
                               int32_t key, double shift) {
  return negative_sum_exp_impl(s, keys, n, mul, key, shift);
}

// One extra log-sum-exp's share of dS for a tile row, from raw cosines (ck::extra_lse_grad):
//   ds_j += [key_j != key]·mul·g·exp(mul·scale·cos_j - xlse);
// returns Σ_j of the added terms times cos_j (their share of the scale gradient).
template <typename T>
CK_INLINE T extra_grad_row_impl(T* ds, const T* cos, const int32_t* keys, int64_t n, T scale,
                                int32_t key, T mul, T g, T xlse) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    const T s = scale * cos[j];  // the forward's rounding of S
    const T d = keys[j] != key ? ck::extra_lse_grad(mul, g, exp_approx(mul * s - xlse)) : T(0);
    ds[j] += d;
    acc += d * cos[j];
  }
  return acc;
}
CK_VEC inline float extra_grad_row(float* ds, const float* cos, const int32_t* keys, int64_t n,
                                   float scale, int32_t key, float mul, float g, float xlse) {
  return extra_grad_row_impl(ds, cos, keys, n, scale, key, mul, g, xlse);
}
inline double extra_grad_row(double* ds, const double* cos, const int32_t* keys, int64_t n,
                             double scale, int32_t key, double mul, double g, double xlse) {
  return extra_grad_row_impl(ds, cos, keys, n, scale, key, mul, g, xlse);
}

// ---------------------------------------------------------------------------------------
// Pairwise losses (ck::siglip_*, ck::hadsell_* in tile_math.h, written out here so the
// float loops vectorize: exp_approx and log1p_unit replace exp and log1p; the double
// versions of both are the exact library functions).
// ---------------------------------------------------------------------------------------

// log(1 + e) for e in [0, 1] as e·P(e), P a degree-9 least-squares fit of log1p(e)/e on
// Chebyshev nodes: 1.7e-7 relative in float arithmetic (about 1.5 ulp), no division.
CK_INLINE float log1p_unit(float e) {
  float p = -0.003256378462538123f;
  p = p * e + 0.019907161593437195f;
  p = p * e - 0.057064201682806015f;
  p = p * e + 0.10614264756441116f;
  p = p * e - 0.15311862528324127f;
  p = p * e + 0.19678117334842682f;
  p = p * e - 0.24954558908939362f;
  p = p * e + 0.33330005407333374f;
  p = p * e - 0.4999990463256836f;
  p = p * e + 1.0f;
  return e * p;
}
inline double log1p_unit(double e) { return std::log1p(e); }

// One SigLIP tile row from raw cosines: returns Σ_j softplus(-z_j·u_j), u = scale·cos + bias.
// With GRAD, also ds_j = g·d term/d u_j, and adds Σ ds_j·cos_j to dscale, Σ ds_j to dbias.
template <bool GRAD, typename T>
CK_INLINE T siglip_row_impl(T* ds, const T* cos, const int32_t* keys, int64_t n, T scale,
                            T bias, int32_t key, T g, T& dscale, T& dbias) {
  T loss = 0, sc = 0, bi = 0;
#pragma omp simd reduction(+ : loss, sc, bi)
  for (int64_t j = 0; j < n; ++j) {
    const T c = cos[j];
    const T u = scale * c + bias;
    const bool match = keys[j] == key;
    const T v = match ? -u : u;                  // the softplus argument, -z·u
    const T e = exp_approx(v < T(0) ? v : -v);   // e^{-|v|}
    loss += (v < T(0) ? T(0) : v) + log1p_unit(e);
    if constexpr (GRAD) {
      const T r = T(1) / (T(1) + e);
      const T sig = v < T(0) ? e * r : r;  // σ(v)
      const T d = g * (match ? -sig : sig);
      ds[j] = d;
      sc += d * c;
      bi += d;
    }
  }
  if constexpr (GRAD) {
    dscale += sc;
    dbias += bi;
  }
  return loss;
}
CK_VEC inline float siglip_row(float* ds, const float* cos, const int32_t* keys, int64_t n,
                               float scale, float bias, int32_t key, float g, float& dscale,
                               float& dbias) {
  if (ds) return siglip_row_impl<true>(ds, cos, keys, n, scale, bias, key, g, dscale, dbias);
  return siglip_row_impl<false>(ds, cos, keys, n, scale, bias, key, g, dscale, dbias);
}
inline double siglip_row(double* ds, const double* cos, const int32_t* keys, int64_t n,
                         double scale, double bias, int32_t key, double g, double& dscale,
                         double& dbias) {
  if (ds) return siglip_row_impl<true>(ds, cos, keys, n, scale, bias, key, g, dscale, dbias);
  return siglip_row_impl<false>(ds, cos, keys, n, scale, bias, key, g, dscale, dbias);
}

// Gram-form squared distances in place (t_j: dot in, d²_j out, ck::gram_sq_dist); returns
// how many are near-coincident (ck::near_coincident), which the caller recomputes.
template <typename T>
CK_INLINE int64_t sq_dist_row_impl(T* t, const T* norm_col, int64_t n, T norm_row) {
  int64_t near = 0;
#pragma omp simd reduction(+ : near)
  for (int64_t j = 0; j < n; ++j) {
    const T both = norm_row + norm_col[j];
    T d2 = both - T(2) * t[j];
    d2 = d2 < T(0) ? T(0) : d2;
    t[j] = d2;
    near += d2 <= T(ck::kCoincident) * both ? 1 : 0;
  }
  return near;
}
CK_VEC inline int64_t sq_dist_row(float* t, const float* norm_col, int64_t n, float norm_row) {
  return sq_dist_row_impl(t, norm_col, n, norm_row);
}
inline int64_t sq_dist_row(double* t, const double* norm_col, int64_t n, double norm_row) {
  return sq_dist_row_impl(t, norm_col, n, norm_row);
}

// One Hadsell tile row from squared distances: returns Σ_j term_j. With GRAD, also
// ds_j = -2·g·d term/d d²_j (the gradient w.r.t. the Gram entry), and adds Σ ds_j to
// rowsum and Σ g·d term/d margin to dmargin.
template <bool GRAD, typename T>
CK_INLINE T hadsell_row_impl(T* ds, const T* d2, const int32_t* keys, int64_t n, int32_t key,
                             T margin, T g, T& rowsum, T& dmargin) {
  T loss = 0, rs = 0, dm = 0;
#pragma omp simd reduction(+ : loss, rs, dm)
  for (int64_t j = 0; j < n; ++j) {
    const T x = d2[j];
    const bool match = keys[j] == key;
    const T d = std::sqrt(x);
    const T t = margin - d;
    const T tp = t < T(0) ? T(0) : t;
    loss += match ? x : tp * tp;
    if constexpr (GRAD) {
      const T neg = ((x > T(0)) & (t > T(0))) ? -t / d : (x != x ? x : T(0));
      const T v = T(-2) * g * (match ? T(1) : neg);
      ds[j] = v;
      rs += v;
      dm += match ? T(0) : g * T(2) * tp;
    }
  }
  if constexpr (GRAD) {
    rowsum += rs;
    dmargin += dm;
  }
  return loss;
}
CK_VEC inline float hadsell_row(float* ds, const float* d2, const int32_t* keys, int64_t n,
                                int32_t key, float margin, float g, float& rowsum,
                                float& dmargin) {
  if (ds) return hadsell_row_impl<true>(ds, d2, keys, n, key, margin, g, rowsum, dmargin);
  return hadsell_row_impl<false>(ds, d2, keys, n, key, margin, g, rowsum, dmargin);
}
inline double hadsell_row(double* ds, const double* d2, const int32_t* keys, int64_t n,
                          int32_t key, double margin, double g, double& rowsum,
                          double& dmargin) {
  if (ds) return hadsell_row_impl<true>(ds, d2, keys, n, key, margin, g, rowsum, dmargin);
  return hadsell_row_impl<false>(ds, d2, keys, n, key, margin, g, rowsum, dmargin);
}

// Batch-hard mining over one tile row of squared distances (from sq_dist_row): the
// largest same-key value and the smallest other-key value (NaN ignored there, counted),
// with candidate counts: stats = {same-key, other-key, same-key NaN, other-key NaN}. The
// caller locates an index only when the tile beats its running best, which is rare after
// the first tiles. Counts are accumulated in T (exact below 2^24) so every lane has the
// float width, which GCC needs to vectorize the mixed reductions.
template <typename T>
CK_INLINE void row_extrema_impl(const T* d2, const int32_t* keys, int64_t n, int32_t key,
                                T& pmax, T& nmin, int32_t* stats) {
  T hi = -std::numeric_limits<T>::infinity(), lo = std::numeric_limits<T>::infinity();
  T np = 0, xp = 0, xn = 0;
#pragma omp simd reduction(max : hi) reduction(min : lo) reduction(+ : np, xp, xn)
  for (int64_t j = 0; j < n; ++j) {
    const T v = d2[j];
    const bool match = keys[j] == key;
    const bool nan = v != v;
    hi = (match & (v > hi)) ? v : hi;  // & not &&: a branch would stop vectorization
    lo = (!match & (v < lo)) ? v : lo;
    np += match ? T(1) : T(0);
    xp += (match & nan) ? T(1) : T(0);
    xn += (!match & nan) ? T(1) : T(0);
  }
  pmax = hi;
  nmin = lo;
  stats[0] = static_cast<int32_t>(np);
  stats[1] = static_cast<int32_t>(n) - stats[0];
  stats[2] = static_cast<int32_t>(xp);
  stats[3] = static_cast<int32_t>(xn);
}
CK_VEC inline void row_extrema(const float* d2, const int32_t* keys, int64_t n, int32_t key,
                               float& pmax, float& nmin, int32_t* stats) {
  row_extrema_impl(d2, keys, n, key, pmax, nmin, stats);
}
inline void row_extrema(const double* d2, const int32_t* keys, int64_t n, int32_t key,
                        double& pmax, double& nmin, int32_t* stats) {
  row_extrema_impl(d2, keys, n, key, pmax, nmin, stats);
}

// The column side of an off-diagonal mining tile (all its columns j lie after row i):
// row i's distances d2[j] are offered to each column j's running best — same-key: max,
// other-key: min, with ck::beats_max/beats_min and "no candidate yet" (index < 0). Rows are
// offered in increasing order, so the lowest index keeps ties.
template <typename T>
CK_INLINE void column_offer_impl(const T* d2, const int32_t* keys, int64_t n, int32_t key,
                                 int32_t row, T* pv, int32_t* pi, T* nv, int32_t* ni) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T v = d2[j];
    const bool match = keys[j] == key;
    const bool nan = v != v;
    const bool pbeat = (v > pv[j]) | (nan & (pv[j] == pv[j])) | (pi[j] < 0);
    const bool nbeat = (v < nv[j]) | (nan & (nv[j] == nv[j])) | (ni[j] < 0);
    const bool tp = match & pbeat, tn = !match & nbeat;
    pv[j] = tp ? v : pv[j];
    pi[j] = tp ? row : pi[j];
    nv[j] = tn ? v : nv[j];
    ni[j] = tn ? row : ni[j];
  }
}
CK_VEC inline void column_offer(const float* d2, const int32_t* keys, int64_t n, int32_t key,
                                int32_t row, float* pv, int32_t* pi, float* nv, int32_t* ni) {
  column_offer_impl(d2, keys, n, key, row, pv, pi, nv, ni);
}
inline void column_offer(const double* d2, const int32_t* keys, int64_t n, int32_t key,
                         int32_t row, double* pv, int32_t* pi, double* nv, int32_t* ni) {
  column_offer_impl(d2, keys, n, key, row, pv, pi, nv, ni);
}

}  // namespace ck_cpu
