// nvcuda::wmma emulated as warp-collective operations. Included by cuda_emu.h.
//
// Semantics (the documented ones; the real element mapping is unspecified and not imitated):
//   * fragment<matrix_a, m, n, k, T, row_major|col_major>  holds the m×k tile A,
//     fragment<matrix_b, ...>                               the k×n tile B,
//     fragment<accumulator, m, n, k, float|__half>          the m×n tile C/D.
//     Shapes m16n16k16, m32n8k16, m8n32k16; A/B in __half or __nv_bfloat16.
//   * Each lane holds num_elements = rows·cols/32 elements (8 for every m16n16k16 fragment):
//     x[i] of lane l is the tile element with row-major linear index l·num_elements + i,
//     i.e. (row, col) = ((l·E + i) / cols, (l·E + i) % cols). Elementwise code that only uses
//     x[i] / num_elements (scaling, activation) is therefore mapping-independent, as in CUDA.
//   * load_matrix_sync / store_matrix_sync / mma_sync wait until all 32 lanes of the warp
//     arrive (a warp barrier; they count as warp-synchronous operations for the divergence
//     check). load/store verify that mptr and ldm are the same in all lanes, that mptr is
//     256-bit aligned and that ldm·sizeof(T) is a multiple of 16 bytes (CUDA's requirements;
//     violations throw ck_emu::usage_error). After a store, other lanes see the stored
//     elements only after a __syncwarp()/barrier, exactly as on the GPU.
//   * mma_sync gathers A and B of the warp through the exchange area (converted exactly to
//     fp32) and each lane computes its own elements of D = A·B + C in fp32 in a fixed order:
//     d = c; for kk = 0..k-1: d += a[r][kk]·b[kk][c] (the products of half/bf16 values are
//     exact in fp32). A __half accumulator is converted to fp32 and rounded back once.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

template <typename Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <int M, int N, int K>
constexpr bool kShape = (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) ||
                        (M == 8 && N == 32 && K == 16);

#if CK_EMU_HAVE_CUDA_HEADERS
template <typename T>
constexpr bool kHalfType = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
inline float to_float(const __half& v) { return __half2float(v); }
inline float to_float(const __nv_bfloat16& v) { return __bfloat162float(v); }
#else
template <typename T>
constexpr bool kHalfType = false;
#endif
inline float to_float(float v) { return v; }

template <typename T>
T from_float(float v) {
#if CK_EMU_HAVE_CUDA_HEADERS
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else
#endif
  {
    return static_cast<T>(v);
  }
}

// The entry of a memory collective: meet the warp (all 32 lanes must exist), check that
// mptr/ldm are warp-uniform and satisfy the alignment rules. Returns this lane's index.
inline unsigned mem_collective(const void* p, unsigned ldm, std::size_t elem_bytes, const char* what) {
  struct Arg {
    const void* p;
    unsigned ldm;
  };
  static_assert(sizeof(Arg) * 32 <= ck_emu::detail::kExchangeBytes);
  ck_emu::detail::ThreadCtx& c = ck_emu::detail::ctx(what);
  if (c.L->warps[c.warp].lanes != 32)
    throw ck_emu::usage_error(std::string(what) + ": needs a complete warp of 32 threads");
  const bool uniform = ck_emu::detail::warp_exchange(
      what,
      [&](unsigned char* buf, const ck_emu::detail::ThreadCtx& tc) {
        const Arg a{p, ldm};
        std::memcpy(buf + tc.lane * sizeof(Arg), &a, sizeof(Arg));
      },
      [&](const unsigned char* buf, const ck_emu::detail::ThreadCtx&) {
        for (unsigned l = 0; l < 32; ++l) {
          Arg a;
          std::memcpy(&a, buf + l * sizeof(Arg), sizeof(Arg));
          if (a.p != p || a.ldm != ldm) return false;
        }
        return true;
      });
  if (!uniform)
    throw ck_emu::usage_error(std::string(what) + ": mptr/ldm differ between the lanes of the warp");
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    throw ck_emu::usage_error(std::string(what) + ": mptr is not 256-bit aligned");
  if ((static_cast<std::size_t>(ldm) * elem_bytes) % 16 != 0)
    throw ck_emu::usage_error(std::string(what) + ": ldm is not a multiple of 16 bytes");
  return c.lane;
}

}  // namespace detail

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
  static_assert(detail::kShape<m, n, k>, "wmma shape not emulated (m16n16k16, m32n8k16, m8n32k16)");
  static_assert(std::is_same_v<Use, accumulator>
                    ? (std::is_same_v<Layout, void> && (std::is_same_v<T, float> || (detail::kHalfType<T> && sizeof(T) == 2)))
                    : ((std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>) && detail::kHalfType<T>),
                "fragment: matrix_a/matrix_b need __half/__nv_bfloat16 and row_major/col_major; "
                "accumulator needs float/__half and no layout");

 public:
  static constexpr int kRows = detail::dims<Use, m, n, k>::rows;
  static constexpr int kCols = detail::dims<Use, m, n, k>::cols;
  static constexpr int num_elements = kRows * kCols / 32;
  using element_type = T;
  using storage_element_type = T;
  T x[num_elements];
};

template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void fill_fragment(fragment<Use, m, n, k, T, Layout>& f, const std::type_identity_t<T>& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads take a layout_t argument");
  using F = fragment<Use, m, n, k, T, Layout>;
  const unsigned lane = detail::mem_collective(p, ldm, sizeof(T), "wmma::load_matrix_sync");
  for (int i = 0; i < F::num_elements; ++i) {
    const int idx = static_cast<int>(lane) * F::num_elements + i;
    const int r = idx / F::kCols, c = idx % F::kCols;
    f.x[i] = std::is_same_v<Layout, row_major> ? p[static_cast<std::size_t>(r) * ldm + c]
                                               : p[static_cast<std::size_t>(c) * ldm + r];
  }
}

template <int m, int n, int k, typename T>
inline void load_matrix_sync(fragment<accumulator, m, n, k, T>& f, const T* p, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, m, n, k, T>;
  const unsigned lane = detail::mem_collective(p, ldm, sizeof(T), "wmma::load_matrix_sync");
  for (int i = 0; i < F::num_elements; ++i) {
    const int idx = static_cast<int>(lane) * F::num_elements + i;
    const int r = idx / F::kCols, c = idx % F::kCols;
    f.x[i] = layout == mem_row_major ? p[static_cast<std::size_t>(r) * ldm + c]
                                     : p[static_cast<std::size_t>(c) * ldm + r];
  }
}

template <int m, int n, int k, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, m, n, k, T>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, m, n, k, T>;
  const unsigned lane = detail::mem_collective(p, ldm, sizeof(T), "wmma::store_matrix_sync");
  for (int i = 0; i < F::num_elements; ++i) {
    const int idx = static_cast<int>(lane) * F::num_elements + i;
    const int r = idx / F::kCols, c = idx % F::kCols;
    if (layout == mem_row_major) {
      p[static_cast<std::size_t>(r) * ldm + c] = f.x[i];
    } else {
      p[static_cast<std::size_t>(c) * ldm + r] = f.x[i];
    }
  }
}

template <int m, int n, int k, typename Td, typename Tab, typename La, typename Lb, typename Tc>
inline void mma_sync(fragment<accumulator, m, n, k, Td>& d, const fragment<matrix_a, m, n, k, Tab, La>& a,
                     const fragment<matrix_b, m, n, k, Tab, Lb>& b, const fragment<accumulator, m, n, k, Tc>& c,
                     bool /*satf*/ = false) {
#if CK_EMU_HAVE_CUDA_HEADERS
  static_assert(!std::is_same_v<Tab, __nv_bfloat16> || (std::is_same_v<Td, float> && std::is_same_v<Tc, float>),
                "bf16 wmma accumulates in float");
#endif
  using FA = fragment<matrix_a, m, n, k, Tab, La>;
  using FB = fragment<matrix_b, m, n, k, Tab, Lb>;
  using FD = fragment<accumulator, m, n, k, Td>;
  constexpr int kA = m * k, kB = k * n;
  static_assert((kA + kB) * sizeof(float) <= ck_emu::detail::kExchangeBytes);
  const char* what = "wmma::mma_sync";
  ck_emu::detail::ThreadCtx& tc0 = ck_emu::detail::ctx(what);
  if (tc0.L->warps[tc0.warp].lanes != 32)
    throw ck_emu::usage_error("wmma::mma_sync: needs a complete warp of 32 threads");
  float out[FD::num_elements];
  ck_emu::detail::warp_exchange(
      what,
      [&](unsigned char* buf, const ck_emu::detail::ThreadCtx& tc) {
        float* A = reinterpret_cast<float*>(buf);
        float* B = A + kA;
        for (int i = 0; i < FA::num_elements; ++i) A[tc.lane * FA::num_elements + i] = detail::to_float(a.x[i]);
        for (int i = 0; i < FB::num_elements; ++i) B[tc.lane * FB::num_elements + i] = detail::to_float(b.x[i]);
      },
      [&](const unsigned char* buf, const ck_emu::detail::ThreadCtx& tc) {
        const float* A = reinterpret_cast<const float*>(buf);
        const float* B = A + kA;
        for (int i = 0; i < FD::num_elements; ++i) {
          const int idx = static_cast<int>(tc.lane) * FD::num_elements + i;
          const int r = idx / n, col = idx % n;
          float s = detail::to_float(c.x[i]);
          for (int kk = 0; kk < k; ++kk) s += A[r * k + kk] * B[kk * n + col];
          out[i] = s;
        }
        return 0;
      });
  for (int i = 0; i < FD::num_elements; ++i) d.x[i] = detail::from_float<Td>(out[i]);
  if (tc0.lane == 0) ck_emu::count_flops(2ull * m * n * k);  // one tile product per warp
}

}  // namespace wmma
}  // namespace nvcuda
