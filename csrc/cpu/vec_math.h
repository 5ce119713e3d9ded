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

namespace ck_cpu {

inline float exp_approx(float x) {
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

CK_VEC inline void scale_inplace(float* s, int64_t n, float a) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] *= a;
}
inline void scale_inplace(double* s, int64_t n, double a) {
  for (int64_t j = 0; j < n; ++j) s[j] *= a;
}

template <typename T>
inline T max_of_impl(const T* s, int64_t n) {
  T m = ck::neg_inf<T>();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}
CK_VEC inline float max_of(const float* s, int64_t n) { return max_of_impl(s, n); }
inline double max_of(const double* s, int64_t n) { return max_of_impl(s, n); }

// Σ_j exp(s_j - shift)
template <typename T>
inline T sum_exp_impl(const T* s, int64_t n, T shift) {
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
inline void col_max_impl(T* colmax, const T* s, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) colmax[j] = s[j] > colmax[j] ? s[j] : colmax[j];
}
CK_VEC inline void col_max(float* colmax, const float* s, int64_t n) {
  col_max_impl(colmax, s, n);
}
inline void col_max(double* colmax, const double* s, int64_t n) { col_max_impl(colmax, s, n); }

// colsum_j += exp(s_j - shift_j)
template <typename T>
inline void col_sum_exp_impl(T* colsum, const T* s, const T* shift, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) colsum[j] += exp_approx(s[j] - shift[j]);
}
CK_VEC inline void col_sum_exp(float* colsum, const float* s, const float* shift, int64_t n) {
  col_sum_exp_impl(colsum, s, shift, n);
}
inline void col_sum_exp(double* colsum, const double* s, const double* shift, int64_t n) {
  col_sum_exp_impl(colsum, s, shift, n);
}

// The softmax part of dS for one tile row (no key matches, no mask yet):
//   ds_j = g·exp(scale·cos_j - lse) [+ gc_j·exp(scale·cos_j - clse_j)]
template <typename T>
inline void softmax_grad_row_impl(T* ds, const T* cos, int64_t n, T scale, T g, T lse,
                                  const T* gc, const T* clse) {
  if (gc == nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
      ds[j] = ck::logit_grad(g, exp_approx(scale * cos[j] - lse), false, T(0), T(0), T(0));
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T s = scale * cos[j];
    ds[j] = ck::logit_grad(g, exp_approx(s - lse), false, T(0), gc[j],
                           exp_approx(s - clse[j]));
  }
}
CK_VEC inline void softmax_grad_row(float* ds, const float* cos, int64_t n, float scale,
                                    float g, float lse, const float* gc, const float* clse) {
  softmax_grad_row_impl(ds, cos, n, scale, g, lse, gc, clse);
}
inline void softmax_grad_row(double* ds, const double* cos, int64_t n, double scale, double g,
                             double lse, const double* gc, const double* clse) {
  softmax_grad_row_impl(ds, cos, n, scale, g, lse, gc, clse);
}

// Σ_j a_j·b_j
template <typename T>
inline T dot_impl(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}
CK_VEC inline float dot(const float* a, const float* b, int64_t n) { return dot_impl(a, b, n); }
inline double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }

}  // namespace ck_cpu
