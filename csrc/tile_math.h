// Tile math of the softmax-family engine, shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels. Every rule that decides a value — the scaled logit, the online
// log-sum-exp update, the gradient of one logit, the normalization backward — is written
// once here, so the CPU test suite exercises the same code the GPU kernels compile.
//
// Notation (ENGINE.md): S_ij = scale · cos_ij with cos_ij = <q̂_i, k̂_j>, q̂ = r·q,
// r = 1 / max(||q||, eps). Row statistics: running max m, running sum l of exp(S - m); the
// extra log-sum-exps over the negatives run the same rules on xmul_t · S.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define CK_HD __host__ __device__ __forceinline__
#else
#define CK_HD inline
#endif

namespace ck {

// F.normalize's eps: norms below it are clamped, and the clamp passes no gradient.
constexpr double kNormEps = 1e-12;

template <typename T>
CK_HD T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// 1 / max(||x||, eps) from the squared norm. A NaN norm stays NaN (no clamp to eps).
template <typename T>
CK_HD T inverse_norm(T sum_sq) {
  const T norm = sqrt(sum_sq);
  return T(1) / (norm < T(kNormEps) ? T(kNormEps) : norm);
}

// Whether the norm was above eps, i.e. whether the normalization passes a gradient.
template <typename T>
CK_HD bool norm_unclamped(T inv_norm) {
  return inv_norm < T(1.0 / kNormEps);
}

// The exponent shift of a running max: a row with no candidate yet keeps m = -inf, and is
// shifted by 0 so exp(-inf - shift) = 0 instead of exp(NaN).
template <typename T>
CK_HD T lse_shift(T m) {
  return m == neg_inf<T>() ? T(0) : m;
}

// log-sum-exp from its running max and sum; l == 0 only when m is already -inf (no
// candidate: the result is -inf). A NaN sum (a NaN logit, or +inf − +inf) stays NaN: the
// running max may have dropped the NaN (fmax, PTX max.f32), the sum never does.
template <typename T>
CK_HD T finish_lse(T m, T l) {
  return m + log(l == T(0) ? T(1) : l);
}

// Merge a partial (pm, pl) into (m, l): both sums are taken relative to their own max.
template <typename T>
CK_HD void merge_lse(T& m, T& l, T pm, T pl) {
  const T m_new = m > pm ? m : pm;
  const T shift = lse_shift(m_new);
  l = l * exp(m - shift) + pl * exp(pm - shift);
  m = m_new;
}

// dS_ij of one valid pair (ENGINE.md): softmax terms of the row (and of the column for
// CLIP), plus the positive-sum term where the keys match. exp_row = exp(S - lse_i).
template <typename T>
CK_HD T logit_grad(T g_row, T exp_row, bool match, T g_pos, T g_col, T exp_col) {
  return g_row * exp_row + (match ? g_pos : T(0)) + g_col * exp_col;
}

// Extra log-sum-exps over a row's negatives (valid candidates whose key differs from the
// row's): xlse_t,i = log Σ_{j negative} exp(xmul_t · S_ij), up to kMaxExtraLse of them per
// call, accumulated like the row lse (the extra logit does not join them). The bound is
// compile-time so that the kernels' per-row slots for them are fixed.
constexpr int kMaxExtraLse = 2;

// The term of extra log-sum-exp t in dS_ij of a negative pair: xmul_t are constants, so
// d xlse_t,i / d S_ij = xmul_t · exp(xmul_t·S_ij − xlse_t,i) = xmul_t · exp_extra.
template <typename T>
CK_HD T extra_lse_grad(T xmul, T g_xlse, T exp_extra) {
  return xmul * g_xlse * exp_extra;
}

// The normalization backward of one row, given G = sum_j dS_ij k̂_j (so dx̂ = scale·G):
//   dx = scale · r · (G - <G, x> r² x)   where ||x|| > eps,   scale · r · G otherwise.
// radial_coef turns <G, x> into the coefficient of x.
template <typename T>
CK_HD T radial_coef(T g_dot_x, T inv_norm) {
  return norm_unclamped(inv_norm) ? g_dot_x * inv_norm * inv_norm : T(0);
}

template <typename T>
CK_HD T normalized_grad(T scale, T inv_norm, T g, T radial, T x) {
  return scale * inv_norm * (g - radial * x);
}


// ---------------------------------------------------------------------------------------
// Pairwise (non-softmax) losses: the value and derivative of one pair's term. Both C++
// engines and the Triton kernels (backends/triton/pairwise.py, same formulas) use these rules.
// ---------------------------------------------------------------------------------------

// log(1 + e^v) without overflow: max(v, 0) + log1p(e^{-|v|}). Written so NaN propagates
// (v < 0 ? 0 : v keeps a NaN, v > 0 ? v : 0 would drop it).
template <typename T>
CK_HD T softplus(T v) {
  const T a = v < T(0) ? -v : v;
  return (v < T(0) ? T(0) : v) + log1p(exp(-a));
}

// σ(v) without overflow: the exponent is never positive.
template <typename T>
CK_HD T sigmoid(T v) {
  const T e = exp(v < T(0) ? v : -v);  // e^{-|v|}
  return v < T(0) ? e / (T(1) + e) : T(1) / (T(1) + e);
}

// SigLIP, one pair with logit u = scale·cos + bias and label z = +1 (match) or -1:
// loss = -log σ(z·u) = softplus(-z·u),  d loss / d u = -z·σ(-z·u).
template <typename T>
CK_HD T siglip_term(T u, bool match) {
  return softplus(match ? -u : u);
}
template <typename T>
CK_HD T siglip_grad(T u, bool match) {
  return match ? -sigmoid(-u) : sigmoid(u);
}

// Squared distance from the Gram form ||a||² + ||b||² - 2<a,b>, clamped at 0 (rounding can
// make it negative; NaN stays NaN).
template <typename T>
CK_HD T gram_sq_dist(T norm_a, T norm_b, T dot) {
  const T d2 = norm_a + norm_b - T(2) * dot;
  return d2 < T(0) ? T(0) : d2;
}

// The Gram form loses all relative accuracy when the two points (nearly) coincide: its
// rounding error is about eps·(||a||² + ||b||²). Pairs closer than this fraction of
// ||a||² + ||b||² get their distance recomputed from the difference Σ(a - b)², which is
// exact for duplicates (d = 0, as the reference's difference form gives).
constexpr double kCoincident = 1.0 / 1024;

template <typename T>
CK_HD bool near_coincident(T d2, T norm_a, T norm_b) {
  return d2 <= T(kCoincident) * (norm_a + norm_b);
}

// Hadsell et al. pair term on the squared distance d2:
//   same label: d2;   else: relu(margin - d)²,  d = sqrt(d2).
template <typename T>
CK_HD T hadsell_term(T d2, bool match, T margin) {
  if (match) return d2;
  const T t = margin - sqrt(d2);
  return t < T(0) ? T(0) : t * t;
}

// d term / d d2. A negative pair at d = 0 has no gradient (the reference's safe sqrt:
// the direction of a - b is undefined there).
template <typename T>
CK_HD T hadsell_grad(T d2, bool match, T margin) {
  if (match) return T(1);
  const T d = sqrt(d2);
  const T t = margin - d;
  return d2 > T(0) && t > T(0) ? -t / d : (d2 != d2 ? d2 : T(0));
}

// d term / d margin: 2·relu(margin - d) for negative pairs, 0 for positive ones.
template <typename T>
CK_HD T hadsell_margin_grad(T d2, bool match, T margin) {
  if (match) return T(0);
  const T t = margin - sqrt(d2);
  return t < T(0) ? T(0) : T(2) * t;
}

// Batch-hard mining: whether candidate value v at a later index replaces the current best
// (strict, so the lowest index wins ties; NaN wins over numbers, as torch.max/min report
// NaN, and a NaN best is kept).
template <typename T>
CK_HD bool beats_max(T v, T best) {
  return v > best || (v != v && best == best);
}
template <typename T>
CK_HD bool beats_min(T v, T best) {
  return v < best || (v != v && best == best);
}

}  // namespace ck
