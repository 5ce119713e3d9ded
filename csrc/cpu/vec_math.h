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

}  // namespace ck_cpu
