// Tile math of the softmax-family engine, shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels. Every rule that decides a value — the scaled logit, the online
// log-sum-exp update, the gradient of one logit, the normalization backward — is written
// once here, so the CPU test suite exercises the same code the GPU kernels compile.
//
// Notation (ENGINE.md): S_ij = scale · cos_ij with cos_ij = <q̂_i, k̂_j>, q̂ = r·q,
// r = 1 / max(||q||, eps). Row statistics: running max m, running sum l of exp(S - m).
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

// log-sum-exp from its running max and sum; l == 0 only when m is already -inf.
template <typename T>
CK_HD T finish_lse(T m, T l) {
  return m + log(l > T(0) ? l : T(1));
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

}  // namespace ck
