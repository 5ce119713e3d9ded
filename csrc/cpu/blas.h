// Row-major tile products on the BLAS that torch itself links (MKL or OpenBLAS export the
// Fortran sgemm_/dgemm_ symbols from libtorch_cpu). The symbols are weak: a torch build
// without them falls back to at::mm on views of the same memory, slower but identical in
// meaning. Every product here is one tile's: called from inside the engine's parallel
// region, where the BLAS runs single-threaded on the calling thread.
#pragma once

#include <torch/extension.h>

#include <atomic>
#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b,
            const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
// MKL's C entry point (the lower-case symbol is the Fortran one, taking a pointer).
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace ck_cpu {

// Inside the engine's parallel region each thread owns whole tiles: its BLAS calls must
// not start threads of their own (MKL would otherwise oversubscribe the cores).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : prior_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prior_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int prior_;
};

// Tests force the at::mm fallback (used where torch exports no Fortran BLAS) to cover it.
inline std::atomic<bool>& force_aten_products() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline bool have_fortran_blas() {
  return sgemm_ != nullptr && dgemm_ != nullptr && !force_aten_products().load();
}

// Column-major BLAS call: C(m×n) = op(A)·op(B) + beta·C.
inline void blas_gemm(char ta, char tb, int m, int n, int k, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void blas_gemm(char ta, char tb, int m, int n, int k, const double* a, int lda,
                      const double* b, int ldb, double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
at::Tensor view(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Row-major C (m×n, ldc) = op(A) · op(B) + beta·C, with op(A) m×k (A stored k×m when
// trans_a) and op(B) k×n (B stored n×k when trans_b). In column-major terms this is
// Cᵀ = op(B)ᵀ · op(A)ᵀ, so the BLAS sees B first.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (have_fortran_blas()) {
    blas_gemm(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', n, m, k, b, ldb, a, lda, beta, c, ldc);
    return;
  }
  auto op_a = trans_a ? view(a, k, m, lda).t() : view(a, m, k, lda);
  auto op_b = trans_b ? view(b, n, k, ldb).t() : view(b, k, n, ldb);
  view(c, m, n, ldc).addmm_(op_a, op_b, beta, 1);  // beta 0: C is not read
}

// C (m×n, ldc) = A (m×k, lda) · B (n×k, ldb)ᵀ + beta·C
template <typename T>
void gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
             int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm(false, true, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// C (m×n) = A (m×k) · B (k×n) + beta·C
template <typename T>
void gemm_nn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
             int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm(false, false, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// C (m×n) = A (k×m)ᵀ · B (k×n) + beta·C
template <typename T>
void gemm_tn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
             int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm(true, false, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace ck_cpu
