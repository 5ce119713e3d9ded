// Self-test of the ck_emu CUDA emulation (csrc/emu/cuda_emu.h). Standalone, no torch:
//   g++ -std=c++20 -O1 -pthread -include csrc/emu/cuda_emu.h -I/usr/local/cuda/include
//       csrc/emu/tests/emu_selftest.cpp -o emu_selftest && ./emu_selftest
// Exit code 0 when every check passes; one "FAIL ..." line per failed check otherwise.
//
// Planted-bug variants (for the sanitizer tests in tests/test_cuda_emu_runtime.py; they run
// only the planted kernel):
//   -DPLANT_RACE  a kernel writes shared memory and reads a neighbour's slot with the
//                 __syncthreads() between them removed (ThreadSanitizer: data race)
//   -DPLANT_OOB   `./emu_selftest shared`: reads one element past a __shared__ array;
//                 `./emu_selftest global`: reads one element past a global buffer at the
//                 ragged edge of the grid (AddressSanitizer)
#include "../cuda_emu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

int g_failures = 0;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      ++g_failures;                                                        \
      std::fprintf(stderr, "FAIL %s:%d: (%s) ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fputc('\n', stderr);                                            \
    }                                                                      \
  } while (0)

// Failures found by kernel threads (reported with the lane's coordinates, first few only).
std::atomic<int> g_kernel_failures{0};
#define KCHECK(cond, ...)                                                                    \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      if (g_kernel_failures.fetch_add(1) < 20) {                                             \
        std::fprintf(stderr, "FAIL %s:%d: (%s) block %u thread %u: ", __FILE__, __LINE__,     \
                     #cond, blockIdx.x, threadIdx.x);                                        \
        std::fprintf(stderr, __VA_ARGS__);                                                   \
        std::fputc('\n', stderr);                                                            \
      }                                                                                      \
    }                                                                                        \
  } while (0)

template <typename T>
struct Aligned {  // 64-byte aligned heap array (wmma needs 256-bit aligned pointers)
  T* p = nullptr;
  std::size_t n = 0;
  explicit Aligned(std::size_t count, T fill = T()) : n(count) {
    const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    for (std::size_t i = 0; i < n; ++i) p[i] = fill;
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  T& operator[](std::size_t i) { return p[i]; }
};

#if !defined(PLANT_RACE) && !defined(PLANT_OOB)

// ---- compile-time checks of the math environment --------------------------------------------
static_assert(std::is_same_v<decltype(exp(1.0f)), float>, "exp(float) must be expf");
static_assert(std::is_same_v<decltype(log(1.0f)), float>, "log(float) must be logf");
static_assert(std::is_same_v<decltype(sqrt(1.0f)), float>, "sqrt(float) must be sqrtf");
static_assert(std::is_same_v<decltype(fma(1.0f, 1.0f, 1.0f)), float>, "fma(float) must be fmaf");
static_assert(std::is_same_v<decltype(log1p(1.0f)), float>, "log1p(float) must be log1pf");
static_assert(std::is_same_v<decltype(exp(1.0)), double>);
static_assert(std::is_same_v<decltype(min(120, 3)), int>);
static_assert(std::is_same_v<decltype(max(2u, 3u)), unsigned>);
static_assert(nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major>::num_elements == 8);
static_assert(nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::col_major>::num_elements == 8);
static_assert(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>::num_elements == 8);

// ---- built-in variables ----------------------------------------------------------------------
__global__ void index_kernel(unsigned* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  unsigned* o = out + 10 * (b * n + t);
  o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
  o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
  o[6] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
  o[7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
  o[8] = warpSize;
  o[9] = 1;
}

void test_indices() {
  const dim3 grid(3, 2, 2), block(8, 4, 3);
  const unsigned n = 96, nb = 12;
  std::vector<unsigned> out(10 * n * nb, 0);
  ck_emu::launch(index_kernel, grid, block, 0, nullptr, out.data());
  int bad = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 3; ++tz)
          for (unsigned ty = 0; ty < 4; ++ty)
            for (unsigned tx = 0; tx < 8; ++tx) {
              const unsigned b = bx + 3 * (by + 2 * bz), t = tx + 8 * (ty + 4 * tz);
              const unsigned* o = &out[10 * (b * n + t)];
              const unsigned want[10] = {tx, ty, tz, bx, by, bz, 80403, 30202, 32, 1};
              bad += !std::equal(want, want + 10, o);
            }
  CHECK(bad == 0, "%d threads saw wrong threadIdx/blockIdx/blockDim/gridDim", bad);
}

// ---- __syncthreads ---------------------------------------------------------------------------
__global__ void barrier_kernel(int* out, int rounds) {
  __shared__ int buf[1024];
  const int n = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * blockIdx.y;
  int acc = 0;
  for (int r = 0; r < rounds; ++r) {
    buf[t] = b * 100000 + r * 1000 + t;
    __syncthreads();
    acc += buf[(t + 1) % n] + buf[(t + n / 2 + r) % n];
    __syncthreads();
  }
  out[b * n + t] = acc;
}

void run_barrier(dim3 grid, dim3 block, const char* name) {
  const int n = block.x * block.y * block.z, nb = grid.x * grid.y, rounds = 5;
  std::vector<int> out(n * nb, -1);
  ck_emu::launch(barrier_kernel, grid, block, 0, nullptr, out.data(), rounds);
  int bad = 0;
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < n; ++t) {
      int want = 0;
      for (int r = 0; r < rounds; ++r)
        want += 2 * (b * 100000 + r * 1000) + (t + 1) % n + (t + n / 2 + r) % n;
      bad += out[b * n + t] != want;
    }
  CHECK(bad == 0, "%s: %d threads read stale shared memory after __syncthreads()", name, bad);
}

void test_barriers() {
  run_barrier(dim3(3), dim3(96), "block 96");
  run_barrier(dim3(2), dim3(128), "block 128");
  run_barrier(dim3(2), dim3(100), "block 100 (partial warp)");
  run_barrier(dim3(2, 2), dim3(8, 4, 3), "block 8x4x3");
  run_barrier(dim3(1), dim3(1), "block 1");
}

__global__ void sync_count_kernel(int* out) {
  const int t = threadIdx.x;
  const int c = __syncthreads_count(t % 5 == 0);
  const int a = __syncthreads_and(t < 1000);
  const int a0 = __syncthreads_and(t != 17);
  const int o = __syncthreads_or(t == 63);
  const int o0 = __syncthreads_or(0);
  KCHECK(c == 26 && a == 1 && a0 == 0 && o == 1 && o0 == 0, "count %d and %d/%d or %d/%d", c, a, a0, o, o0);
  out[t] = 1;
}

void test_sync_count() {
  std::vector<int> out(128, 0);
  ck_emu::launch(sync_count_kernel, 2, 128, 0, nullptr, out.data());
  CHECK(std::count(out.begin(), out.end(), 1) == 128, "sync_count kernel did not complete");
}

// ---- __syncwarp ------------------------------------------------------------------------------
__global__ void syncwarp_kernel(int* out) {
  __shared__ int buf[256];
  const int t = threadIdx.x, lane = t % 32, base = t - lane;
  int acc = 0;
  for (int r = 0; r < 4; ++r) {
    buf[t] = t * 10 + r;
    __syncwarp();
    acc += buf[base + (lane + 1 + r) % 32];
    __syncwarp();
  }
  out[blockIdx.x * blockDim.x + t] = acc;
}

void test_syncwarp() {
  std::vector<int> out(256, -1);
  ck_emu::launch(syncwarp_kernel, 2, 128, 0, nullptr, out.data());
  int bad = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 128; ++t) {
      const int lane = t % 32, base = t - lane;
      int want = 0;
      for (int r = 0; r < 4; ++r) want += (base + (lane + 1 + r) % 32) * 10 + r;
      bad += out[b * 128 + t] != want;
    }
  CHECK(bad == 0, "%d lanes read stale shared memory after __syncwarp()", bad);
}

// ---- shuffles and votes ----------------------------------------------------------------------
template <typename T>
T make(int lane, int warp) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(lane * 2 - 31 + warp));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(lane * 2 - 31 + warp));
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(lane * 0.5 - 3.25 + warp * 100);
  } else if constexpr (sizeof(T) == 8) {
    return static_cast<T>((1LL << 40) + lane * 3 + warp * 1000);
  } else {
    return static_cast<T>(lane * 3 + 7 + warp * 1000);
  }
}
template <typename T>
bool same(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
__global__ void shuffle_kernel(int* done) {
  constexpr unsigned full = 0xffffffffu;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T v = make<T>(lane, warp);
  auto at = [&](int l) { return make<T>(l, warp); };
  T r = __shfl_sync(full, v, (lane * 3 + 1) % 32);
  KCHECK(same(r, at((lane * 3 + 1) % 32)), "__shfl_sync");
  r = __shfl_sync(full, v, 37);  // out of range: modulo width
  KCHECK(same(r, at(5)), "__shfl_sync(37)");
  r = __shfl_sync(full, v, 5, 8);
  KCHECK(same(r, at((lane & ~7) + 5)), "__shfl_sync width 8");
  r = __shfl_up_sync(full, v, 3);
  KCHECK(same(r, lane >= 3 ? at(lane - 3) : v), "__shfl_up_sync");
  r = __shfl_up_sync(full, v, 3, 16);
  KCHECK(same(r, (lane % 16) >= 3 ? at(lane - 3) : v), "__shfl_up_sync width 16");
  r = __shfl_down_sync(full, v, 5);
  KCHECK(same(r, lane + 5 < 32 ? at(lane + 5) : v), "__shfl_down_sync");
  r = __shfl_down_sync(full, v, 2, 8);
  KCHECK(same(r, (lane % 8) + 2 < 8 ? at(lane + 2) : v), "__shfl_down_sync width 8");
  for (int m = 1; m < 32; m <<= 1) {
    r = __shfl_xor_sync(full, v, m);
    KCHECK(same(r, at(lane ^ m)), "__shfl_xor_sync %d", m);
  }
  r = __shfl_xor_sync(full, v, 3, 8);
  KCHECK(same(r, at(lane ^ 3)), "__shfl_xor_sync width 8");
  r = __shfl_xor_sync(full, v, 16, 16);  // later group: own value; earlier group: allowed
  KCHECK(same(r, lane < 16 ? v : at(lane - 16)), "__shfl_xor_sync width 16");
  if constexpr (std::is_integral_v<T> || std::is_floating_point_v<T>) {
    // The warp_sum / warp_max butterflies of tile_products.cuh.
    T s = v, mx = v;
    for (int o = 16; o > 0; o >>= 1) {
      s += __shfl_xor_sync(full, s, o);
      const T w = __shfl_xor_sync(full, mx, o);
      mx = w > mx ? w : mx;
    }
    T want = 0;
    for (int l = 0; l < 32; ++l) want += at(l);
    KCHECK(s == want && mx == at(31), "butterfly sum/max");
  }
  if (lane == 0) atomicAdd(done, 1);
}

__global__ void vote_kernel(int* done) {
  constexpr unsigned full = 0xffffffffu;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool p = ((lane % 3 == 0) != (warp & 1));
  unsigned want = 0;
  for (int l = 0; l < 32; ++l) want |= unsigned((l % 3 == 0) != (warp & 1)) << l;
  const unsigned b = __ballot_sync(full, p);
  KCHECK(b == want, "__ballot_sync %08x != %08x", b, want);
  KCHECK(__any_sync(full, lane == 7) == 1, "__any_sync true");
  KCHECK(__any_sync(full, 0) == 0, "__any_sync false");
  KCHECK(__all_sync(full, lane < 32) == 1, "__all_sync true");
  KCHECK(__all_sync(full, lane != 5) == 0, "__all_sync false");
  KCHECK(__activemask() == full, "__activemask");
  if (lane == 0) atomicAdd(done, 1);
}

template <typename T>
void run_shuffles(const char* name) {
  int done = 0;
  const int before = g_kernel_failures.load();
  ck_emu::launch(shuffle_kernel<T>, 2, 128, 0, nullptr, &done);
  CHECK(done == 8 && g_kernel_failures.load() == before, "shuffles of %s", name);
}

void test_shuffles() {
  run_shuffles<int>("int");
  run_shuffles<unsigned>("unsigned");
  run_shuffles<long long>("long long");
  run_shuffles<float>("float");
  run_shuffles<double>("double");
  run_shuffles<__half>("__half");
  run_shuffles<__nv_bfloat16>("__nv_bfloat16");
  int done = 0;
  const int before = g_kernel_failures.load();
  ck_emu::launch(vote_kernel, 3, 96, 0, nullptr, &done);
  CHECK(done == 9 && g_kernel_failures.load() == before, "votes");
}

// ---- atomics ---------------------------------------------------------------------------------
__global__ void atomic_kernel(double* dsum, float* fsum, float* fold, unsigned* ucount, int iters) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  for (int i = 0; i < iters; ++i) {
    atomicAdd(dsum, 0.5);
    fold[g * iters + i] = atomicAdd(fsum, 1.0f);
    atomicAdd(ucount, 1u);
  }
}

void test_atomics() {
  const int blocks = 5, threads = 96, iters = 50, n = blocks * threads * iters;
  double dsum = 0;
  float fsum = 0;
  unsigned ucount = 0;
  std::vector<float> fold(n, -1.0f);
  ck_emu::launch(atomic_kernel, blocks, threads, 0, nullptr, &dsum, &fsum, fold.data(), &ucount, iters);
  CHECK(dsum == 0.5 * n, "atomicAdd(double): %.17g != %.17g", dsum, 0.5 * n);
  CHECK(fsum == static_cast<float>(n), "atomicAdd(float): %.9g", fsum);
  CHECK(ucount == static_cast<unsigned>(n), "atomicAdd(unsigned): %u", ucount);
  std::sort(fold.begin(), fold.end());
  int bad = 0;
  for (int i = 0; i < n; ++i) bad += fold[i] != static_cast<float>(i);
  CHECK(bad == 0, "atomicAdd(float) old values are not a permutation of 0..%d (%d wrong)", n - 1, bad);
}

// ---- wmma ------------------------------------------------------------------------------------
constexpr int kM = 16, kN = 16, kK = 32;  // two k-steps of 16

template <typename T>
struct WmmaArgs {
  const T* a[2];
  const T* b[2];
  const float* c[2];
  float* d[2];
  float* dcopy[2];
  unsigned lda, ldb, ldc, ldd;
  nvcuda::wmma::layout_t c_layout, d_layout;
};

// Warp w: D_w = 0.5·(C_w + A_w·B_w) − 1 (C_w loaded for warp 0, filled with 1.5 for warp 1),
// stored with (ldd, d_layout), then copied by lanes that did not store it (after __syncwarp).
template <typename T, typename LA, typename LB>
__global__ void wmma_kernel(const WmmaArgs<T> p) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  if (warp == 0) {
    wmma::load_matrix_sync(acc, p.c[warp], p.ldc, p.c_layout);
  } else {
    wmma::fill_fragment(acc, 1.5f);
  }
  for (int kk = 0; kk < kK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
    const T* pa = std::is_same_v<LA, wmma::row_major> ? p.a[warp] + kk : p.a[warp] + kk * p.lda;
    const T* pb = std::is_same_v<LB, wmma::row_major> ? p.b[warp] + kk * p.ldb : p.b[warp] + kk;
    wmma::load_matrix_sync(fa, pa, p.lda);
    wmma::load_matrix_sync(fb, pb, p.ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = acc.x[i] * 0.5f - 1.0f;
  wmma::store_matrix_sync(p.d[warp], acc, p.ldd, p.d_layout);
  __syncwarp();
  const int c = lane % 16;
  for (int r = (lane / 16) * 8; r < (lane / 16) * 8 + 8; ++r) {
    const float v = p.d_layout == wmma::mem_row_major ? p.d[warp][r * p.ldd + c] : p.d[warp][c * p.ldd + r];
    p.dcopy[warp][r * 16 + c] = v;
  }
}

template <typename T>
T to_t(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}
template <typename T>
float to_f(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

// exact: small multiples of 1/8 (every product and sum exact in fp32); otherwise
// pseudo-random values, compared with the fixed summation order of the emulation.
template <typename T, typename LA, typename LB>
void run_wmma(nvcuda::wmma::layout_t cd_layout, unsigned ldd, bool exact, const char* name) {
  using namespace nvcuda;
  const bool a_row = std::is_same_v<LA, wmma::row_major>, b_row = std::is_same_v<LB, wmma::row_major>;
  const unsigned lda = a_row ? 40 : 24, ldb = b_row ? 24 : 40;  // both != 16, row/col stride
  const std::size_t a_len = a_row ? kM * lda : kK * lda, b_len = b_row ? kK * ldb : kN * ldb;
  const std::size_t d_len = 16 * ldd;
  std::unique_ptr<Aligned<T>> A[2], B[2];
  std::unique_ptr<Aligned<float>> C[2], D[2], Dc[2];
  std::vector<float> want[2];
  unsigned seed = 12345u + ldd * 7u + (a_row ? 1u : 0u) + (b_row ? 2u : 0u);
  auto rnd = [&] {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
  };
  WmmaArgs<T> args{};
  for (int w = 0; w < 2; ++w) {
    A[w] = std::make_unique<Aligned<T>>(a_len, to_t<T>(1000.0f));  // padding: poison
    B[w] = std::make_unique<Aligned<T>>(b_len, to_t<T>(1000.0f));
    C[w] = std::make_unique<Aligned<float>>(d_len, 1.0e6f);
    D[w] = std::make_unique<Aligned<float>>(d_len, -777.0f);
    Dc[w] = std::make_unique<Aligned<float>>(256, -777.0f);
    float a[kM][kK], b[kK][kN], c[kM][kN];
    for (int r = 0; r < kM; ++r)
      for (int k = 0; k < kK; ++k)
        a[r][k] = to_f(to_t<T>(exact ? ((r * 7 + k * 3 + w) % 9 - 4) * 0.5f : rnd()));
    for (int k = 0; k < kK; ++k)
      for (int n = 0; n < kN; ++n)
        b[k][n] = to_f(to_t<T>(exact ? ((k * 5 + n * 11 + 2 * w) % 7 - 3) * 0.25f : rnd()));
    for (int r = 0; r < kM; ++r)
      for (int n = 0; n < kN; ++n) c[r][n] = w == 1 ? 1.5f : (exact ? (r - n) * 0.125f : rnd());
    for (int r = 0; r < kM; ++r)
      for (int k = 0; k < kK; ++k) (*A[w])[a_row ? r * lda + k : k * lda + r] = to_t<T>(a[r][k]);
    for (int k = 0; k < kK; ++k)
      for (int n = 0; n < kN; ++n) (*B[w])[b_row ? k * ldb + n : n * ldb + k] = to_t<T>(b[k][n]);
    for (int r = 0; r < kM; ++r)
      for (int n = 0; n < kN; ++n)
        (*C[w])[cd_layout == wmma::mem_row_major ? r * ldd + n : n * ldd + r] = c[r][n];
    want[w].resize(256);
    for (int r = 0; r < kM; ++r)
      for (int n = 0; n < kN; ++n) {
        float s = c[r][n];
        for (int k = 0; k < kK; ++k) s += a[r][k] * b[k][n];  // the emulation's fixed order
        want[w][r * 16 + n] = s * 0.5f - 1.0f;
      }
    args.a[w] = A[w]->p;
    args.b[w] = B[w]->p;
    args.c[w] = C[w]->p;
    args.d[w] = D[w]->p;
    args.dcopy[w] = Dc[w]->p;
  }
  args.lda = lda;
  args.ldb = ldb;
  args.ldc = ldd;
  args.ldd = ldd;
  args.c_layout = cd_layout;
  args.d_layout = cd_layout;
  ck_emu::launch(wmma_kernel<T, LA, LB>, 1, 64, 0, nullptr, args);
  for (int w = 0; w < 2; ++w) {
    int bad = 0, bad_copy = 0, clobbered = 0;
    for (int r = 0; r < kM; ++r)
      for (int n = 0; n < kN; ++n) {
        const float got = (*D[w])[cd_layout == wmma::mem_row_major ? r * ldd + n : n * ldd + r];
        bad += !(got == want[w][r * 16 + n]);
        bad_copy += !((*Dc[w])[r * 16 + n] == want[w][r * 16 + n]);
      }
    for (std::size_t i = 0; i < d_len; ++i) clobbered += (i % ldd >= 16) && (*D[w])[i] != -777.0f;
    CHECK(bad == 0 && bad_copy == 0 && clobbered == 0,
          "wmma %s %s warp %d: %d wrong, %d wrong after __syncwarp copy, %d padding writes", name,
          exact ? "exact" : "random", w, bad, bad_copy, clobbered);
  }
}

template <typename T>
void run_wmma_type(const char* tname) {
  using namespace nvcuda;
  for (wmma::layout_t cd : {wmma::mem_row_major, wmma::mem_col_major})
    for (unsigned ldd : {24u, 40u})
      for (bool exact : {true, false}) {
        char name[96];
        auto nm = [&](const char* la, const char* lb) {
          std::snprintf(name, sizeof name, "%s A %s B %s C/D %s ldd %u", tname, la, lb,
                        cd == wmma::mem_row_major ? "row" : "col", ldd);
          return name;
        };
        run_wmma<T, wmma::row_major, wmma::row_major>(cd, ldd, exact, nm("row", "row"));
        run_wmma<T, wmma::row_major, wmma::col_major>(cd, ldd, exact, nm("row", "col"));
        run_wmma<T, wmma::col_major, wmma::row_major>(cd, ldd, exact, nm("col", "row"));
        run_wmma<T, wmma::col_major, wmma::col_major>(cd, ldd, exact, nm("col", "col"));
      }
}

void test_wmma() {
  run_wmma_type<__half>("half");
  run_wmma_type<__nv_bfloat16>("bf16");
}

template <typename E, typename F>
std::string expect_throw(F&& f, const char* what) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    CHECK(false, "%s: wrong exception: %s", what, e.what());
    return {};
  }
  CHECK(false, "%s: nothing thrown", what);
  return {};
}

// ---- PTX-level intrinsics: ldmatrix, mma.sync m16n8k16, cp.async (emu_ptx.h) ----------------
// 16-bit codes of matrix i's element (row, col): every element distinct.
constexpr std::uint16_t code(int i, int row, int col) { return static_cast<std::uint16_t>(i * 256 + row * 16 + col); }
constexpr int kLdRow = 24;  // elements per shared row (48 bytes: 16-byte aligned rows, padded)

// Lane l points at row l % 8 of matrix l / 8; registers checked against the PTX ISA's figure
// for ldmatrix .m8n8.b16 (thread l: row l/4, columns 2(l%4), 2(l%4)+1; .trans: the transposed
// matrix's, i.e. rows 2(l%4), 2(l%4)+1 of column l/4).
__global__ void ldmatrix_kernel(int* done) {
  std::uint16_t* sm = ck_emu::dynamic_shared<std::uint16_t>();
  const int lane = threadIdx.x;
  for (int e = lane; e < 4 * 8 * kLdRow; e += 32) {
    const int i = e / (8 * kLdRow), row = (e / kLdRow) % 8, col = e % kLdRow;
    sm[e] = col < 8 ? code(i, row, col) : 0xdead;
  }
  __syncwarp();
  const void* addr = sm + ((lane / 8) * 8 + lane % 8) * kLdRow;
  for (int num : {1, 2, 4})
    for (bool trans : {false, true}) {
      unsigned r[4] = {0, 0, 0, 0};
      ck_emu::ldmatrix(r, num, trans, addr);
      for (int i = 0; i < num; ++i) {
        const int g = lane / 4, t = lane % 4;
        const unsigned lo = trans ? code(i, 2 * t, g) : code(i, g, 2 * t);
        const unsigned hi = trans ? code(i, 2 * t + 1, g) : code(i, g, 2 * t + 1);
        KCHECK(r[i] == (lo | hi << 16), "ldmatrix x%d%s reg %d: %08x != %08x", num,
               trans ? ".trans" : "", i, r[i], lo | hi << 16);
      }
    }
  if (lane == 0) atomicAdd(done, 1);
}

template <typename T>
unsigned pack(T lo, T hi) {
  std::uint16_t a, b;
  std::memcpy(&a, &lo, 2);
  std::memcpy(&b, &hi, 2);
  return static_cast<unsigned>(a) | static_cast<unsigned>(b) << 16;
}

// Fragments built by each lane from the PTX ISA's table for mma.m16n8k16 (.f16/.bf16):
// a_i: row = g (i ∈ {0,1,4,5}) or g+8, col = 2t + (i&1) (+8 for i ≥ 4), two per register;
// b_i: row = 2t + (i&1) (+8 for i ≥ 2), col = g; c_i: row = g (+8 for i ≥ 2), col = 2t + (i&1).
template <typename T>
__global__ void mma_kernel(const float* A, const float* B, const float* C, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto a_el = [&](int i) {
    const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
    const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
    return to_t<T>(A[row * 16 + col]);
  };
  auto b_el = [&](int i) { return to_t<T>(B[(2 * t + (i & 1) + (i >= 2 ? 8 : 0)) * 8 + g]); };
  unsigned a[4], b[2];
  for (int r = 0; r < 4; ++r) a[r] = pack(a_el(2 * r), a_el(2 * r + 1));
  for (int r = 0; r < 2; ++r) b[r] = pack(b_el(2 * r), b_el(2 * r + 1));
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) c[i] = C[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
  ck_emu::mma_m16n8k16(d, a, b, c, std::is_same_v<T, __nv_bfloat16>);
  for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}

// The kernels' use: ldmatrix-fed fragments. D1 = A·B with A row-major [m][k] (ldmatrix
// .x4), B stored [n][k] (ldmatrix .x2, plain); D2 the same with B stored [k][n] (.x2.trans);
// D3 = Aᵀᵀ·B with A stored [k][m] (ldmatrix .x4.trans for the A operand).
template <typename T>
__global__ void ldmatrix_mma_kernel(const float* A, const float* B, float* D) {
  T* sm = ck_emu::dynamic_shared<T>();
  T* a = sm;                  // [16][kLdRow]: A[m][k]
  T* at = sm + 16 * kLdRow;   // [16][kLdRow]: A[k][m]
  T* bn = sm + 32 * kLdRow;   // [8][kLdRow]:  B[k][n] stored as [n][k]
  T* bk = sm + 40 * kLdRow;   // [16][kLdRow]: B[k][n] stored as [k][n]
  const int lane = threadIdx.x;
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    a[r * kLdRow + c] = to_t<T>(A[r * 16 + c]);
    at[c * kLdRow + r] = to_t<T>(A[r * 16 + c]);
  }
  for (int e = lane; e < 128; e += 32) {
    const int k = e / 8, n = e % 8;
    bn[n * kLdRow + k] = to_t<T>(B[k * 8 + n]);
    bk[k * kLdRow + n] = to_t<T>(B[k * 8 + n]);
  }
  __syncwarp();
  unsigned fa[4], fat[4], fb[4], fbt[4];
  ck_emu::ldmatrix(fa, 4, false, a + (lane % 16) * kLdRow + (lane / 16) * 8);
  // A operand from [k][m]: matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), ...
  ck_emu::ldmatrix(fat, 4, true, at + ((lane % 8) + (lane / 16) * 8) * kLdRow + ((lane / 8) % 2) * 8);
  ck_emu::ldmatrix(fb, 2, false, bn + (lane % 8) * kLdRow + ((lane / 8) % 2) * 8);
  ck_emu::ldmatrix(fbt, 2, true, bk + (lane % 16) * kLdRow);
  const bool bf = std::is_same_v<T, __nv_bfloat16>;
  const float zero[4] = {0, 0, 0, 0};
  float d[3][4];
  ck_emu::mma_m16n8k16(d[0], fa, fb, zero, bf);
  ck_emu::mma_m16n8k16(d[1], fa, fbt, zero, bf);
  ck_emu::mma_m16n8k16(d[2], fat, fb, zero, bf);
  const int g = lane / 4, t = lane % 4;
  for (int w = 0; w < 3; ++w)
    for (int i = 0; i < 4; ++i) D[w * 128 + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[w][i];
}

template <typename T>
void run_mma(const char* name) {
  std::vector<float> A(256), B(128), C(128), D(128, -1.0f), D3(3 * 128, -1.0f), want(128), prod(128);
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) A[r * 16 + k] = static_cast<float>((r * 5 + k * 3) % 11 - 5);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) B[k * 8 + n] = static_cast<float>((k * 7 + n * 2) % 9 - 4) * 0.5f;
  for (int i = 0; i < 128; ++i) C[i] = static_cast<float>(i % 13) - 6.0f;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float s = 0;
      for (int k = 0; k < 16; ++k) s += A[r * 16 + k] * B[k * 8 + n];  // exact small integers
      prod[r * 8 + n] = s;
      want[r * 8 + n] = s + C[r * 8 + n];
    }
  ck_emu::launch(mma_kernel<T>, 1, 32, 0, nullptr, A.data(), B.data(), C.data(), D.data());
  int bad = 0;
  for (int i = 0; i < 128; ++i) bad += D[i] != want[i];
  CHECK(bad == 0, "mma.m16n8k16 %s: %d of 128 elements wrong", name, bad);
  ck_emu::launch(ldmatrix_mma_kernel<T>, 1, 32, 56 * kLdRow * sizeof(T), nullptr, A.data(), B.data(),
                 D3.data());
  for (int w = 0; w < 3; ++w) {
    bad = 0;
    for (int i = 0; i < 128; ++i) bad += D3[w * 128 + i] != prod[i];
    CHECK(bad == 0, "ldmatrix-fed mma %s, variant %d: %d of 128 elements wrong", name, w, bad);
  }
}

// cp.async: 64 threads copy 16-, 8- and 4-byte pieces (and a zero-filled one) of a global
// buffer into shared memory in three commit groups; nothing lands before the wait, waiting
// for all but the newest group lands the older ones only, the block sees them after a barrier.
__global__ void cp_async_kernel(const std::uint32_t* src, std::uint32_t* out, int* done) {
  std::uint32_t* sm = ck_emu::dynamic_shared<std::uint32_t>();
  const int t = threadIdx.x;
  for (int i = 0; i < 8; ++i) sm[t * 8 + i] = 0xffffffffu;  // sentinel
  __syncthreads();
  ck_emu::cp_async(sm + t * 8, src + t * 8, 16, 16);          // group 0: words 0-3
  ck_emu::cp_async_commit();
  ck_emu::cp_async(sm + t * 8 + 4, src + t * 8 + 4, 8, 8);    // group 1: words 4-5
  ck_emu::cp_async(sm + t * 8 + 6, src + t * 8 + 6, 4, 4);    //          word 6
  ck_emu::cp_async_commit();
  ck_emu::cp_async(sm + t * 8 + 7, src, 4, 0);                // group 2: zero-fill word 7
  ck_emu::cp_async_commit();
  KCHECK(sm[t * 8] == 0xffffffffu && sm[t * 8 + 7] == 0xffffffffu, "cp.async visible before the wait");
  ck_emu::cp_async_wait(1);  // groups 0 and 1 complete, group 2 may be pending
  KCHECK(sm[t * 8] == src[t * 8] && sm[t * 8 + 5] == src[t * 8 + 5] && sm[t * 8 + 6] == src[t * 8 + 6],
         "cp.async groups 0/1 not complete after wait_group 1");
  KCHECK(sm[t * 8 + 7] == 0xffffffffu, "cp.async group 2 completed by wait_group 1");
  ck_emu::cp_async_wait(0);
  __syncthreads();
  const int o = (t + 1) % blockDim.x;  // another thread's copies
  for (int i = 0; i < 8; ++i) out[t * 8 + i] = sm[o * 8 + i];
  if (t == 0) atomicAdd(done, 1);
}

void test_ptx() {
  int done = 0;
  const int before = g_kernel_failures.load();
  ck_emu::launch(ldmatrix_kernel, 1, 32, 4 * 8 * kLdRow * sizeof(std::uint16_t), nullptr, &done);
  CHECK(done == 1 && g_kernel_failures.load() == before, "ldmatrix");
  run_mma<__half>("f16");
  run_mma<__nv_bfloat16>("bf16");
  std::vector<std::uint32_t> src(64 * 8), out(64 * 8, 0);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint32_t>(i * 2654435761u);
  done = 0;
  ck_emu::launch(cp_async_kernel, 2, 64, 64 * 8 * sizeof(std::uint32_t), nullptr, src.data(), out.data(), &done);
  int bad = 0;
  for (int t = 0; t < 64; ++t)
    for (int i = 0; i < 8; ++i) bad += out[t * 8 + i] != (i == 7 ? 0u : src[((t + 1) % 64) * 8 + i]);
  CHECK(done == 2 && bad == 0 && g_kernel_failures.load() == before, "cp.async: %d words wrong", bad);
  // Misaligned addresses are refused, as the PTX requires.
  Aligned<std::uint32_t> buf(64, 0);
  std::string m = expect_throw<ck_emu::usage_error>(
      [&] {
        ck_emu::launch([](std::uint32_t* p) {
          ck_emu::cp_async(ck_emu::dynamic_shared<std::uint32_t>() + 1, p, 16, 16);
        }, 1, 1, 64, nullptr, buf.p);
      }, "misaligned cp.async");
  CHECK(m.find("aligned") != std::string::npos, "misaligned cp.async message: %s", m.c_str());
  m = expect_throw<ck_emu::usage_error>(
      [&] {
        ck_emu::launch([] {
          unsigned r[4];
          ck_emu::ldmatrix(r, 4, false, ck_emu::dynamic_shared<unsigned char>() + 8);
        }, 1, 32, 256, nullptr);
      }, "misaligned ldmatrix");
  CHECK(m.find("aligned") != std::string::npos, "misaligned ldmatrix message: %s", m.c_str());
}

// ---- traffic counters --------------------------------------------------------------------------
__global__ void traffic_kernel(const float* in, float* out, float* acc) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  ck_emu::count_load(sizeof(float));
  const float v = in[i];
  ck_emu::count_store(sizeof(float));
  out[i] = 2 * v;
  ck_emu::count_atomic(sizeof(float));
  atomicAdd(acc, v);
  ck_emu::count_flops(3);
}

void test_traffic() {
  std::vector<float> in(96 * 3, 1.0f), out(96 * 3, 0.0f);
  float acc = 0;
  const std::size_t outer = ck_emu::traffic_begin();
  ck_emu::launch(traffic_kernel, 3, 96, 0, nullptr, in.data(), out.data(), &acc);
  const std::size_t inner = ck_emu::traffic_begin();
  ck_emu::launch_named("named", traffic_kernel, dim3(2, 2), 64, 0, nullptr, in.data(), out.data(), &acc);
  ck_emu::count_load(1000);  // outside a kernel: not counted
  const std::vector<ck_emu::LaunchRecord> in_rec = ck_emu::traffic_end(inner);
  const std::vector<ck_emu::LaunchRecord> all = ck_emu::traffic_end(outer);
  CHECK(in_rec.size() == 1 && all.size() == 2, "records: inner %zu, outer %zu", in_rec.size(), all.size());
  if (all.size() == 2 && in_rec.size() == 1) {
    const ck_emu::LaunchRecord& a = all[0];
    CHECK(a.programs == 3 && a.threads == 96 && a.num_warps == 3 && a.kernel.empty(),
          "record 0: programs %llu threads %u warps %u", a.programs, a.threads, a.num_warps);
    CHECK(a.traffic.loaded == 288 * 4 && a.traffic.stored == 288 * 4 && a.traffic.atomic == 288 * 4 &&
              a.traffic.flops == 288 * 3,
          "record 0 counts: %llu %llu %llu %llu", a.traffic.loaded, a.traffic.stored, a.traffic.atomic,
          a.traffic.flops);
    const ck_emu::LaunchRecord& b = in_rec[0];
    CHECK(b.kernel == "named" && b.programs == 4 && b.num_warps == 2 && b.traffic.loaded == 256 * 4,
          "record 1: %s programs %llu loaded %llu", b.kernel.c_str(), b.programs, b.traffic.loaded);
  }
  // Closed: later launches are not kept.
  ck_emu::launch(traffic_kernel, 1, 32, 0, nullptr, in.data(), out.data(), &acc);
  const std::size_t again = ck_emu::traffic_begin();
  CHECK(ck_emu::traffic_end(again).empty(), "launches recorded while no traffic_begin was open");
}

// ---- misc: dynamic shared memory, launcher, lambdas, tile_math-style math --------------------
__global__ void dyn_smem_kernel(float* out) {
  float* s = ck_emu::dynamic_shared<float>();
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = static_cast<float>(t) + blockIdx.x;
  __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
}

__global__ void math_kernel(float* out) {
  // stage_half_ds's exponent rule and friends, as the kernels write them.
  const float mx = 3.0f + threadIdx.x;
  int e = 0;
  if (mx > 0.0f && mx < INFINITY) e = min(120, static_cast<int>(floorf(log2f(16384.0f / mx))));
  out[threadIdx.x] = ldexpf(1.0f, e) * fmaxf(fabsf(-mx), 0.0f) + expf(0.0f) + logf(1.0f);
}

void test_misc() {
  std::vector<float> out(2 * 64, -1.0f);
  ck_emu::launch(dyn_smem_kernel, 2, 64, 64 * sizeof(float), nullptr, out.data());
  int bad = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 64; ++t) bad += out[b * 64 + t] != static_cast<float>(63 - t + b);
  CHECK(bad == 0, "dynamic shared memory: %d wrong", bad);

  std::vector<float> m(32, 0.0f);
  ck_emu::launcher(math_kernel, 1, 32)(m.data());
  bad = 0;
  for (int t = 0; t < 32; ++t) {
    const float mx = 3.0f + t;
    const int e = std::min(120, static_cast<int>(std::floor(std::log2(16384.0f / mx))));
    bad += m[t] != std::ldexp(1.0f, e) * mx + 1.0f;
  }
  CHECK(bad == 0, "math kernel: %d wrong", bad);

  int sum = 0;
  ck_emu::launch([](int* s, int k) { atomicAdd(s, k + static_cast<int>(threadIdx.x)); }, 1, 10, 0,
                 nullptr, &sum, 100);
  CHECK(sum == 1045, "lambda kernel: %d", sum);
}

// ---- error reporting -------------------------------------------------------------------------
__global__ void early_return_kernel(int* out) {
  if (threadIdx.x >= 64) return;  // the rest of the block waits at the barrier below
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = 1;
}

__global__ void warp_divergent_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);  // half the warp only
  out[threadIdx.x] = v;
}

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x % 32 == 0) {
    __syncthreads();  // waits for the other lanes...
  } else {
    __syncwarp();  // ...which wait for lane 0
  }
  out[threadIdx.x] = 1;
}

__global__ void throwing_kernel(int* out) {
  if (blockIdx.x == 1 && threadIdx.x == 5) throw std::runtime_error("boom from (1, 5)");
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1, 0); }

__global__ void misaligned_wmma_kernel(const __half* p) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> f;
  nvcuda::wmma::load_matrix_sync(f, p + 1, 16);
}

__global__ void nested_launch_kernel(int* out) {
  ck_emu::launch(early_return_kernel, 1, 1, 0, nullptr, out);
}


void test_errors() {
  std::vector<int> out(256, 0);
  std::string m = expect_throw<ck_emu::barrier_divergence>(
      [&] { ck_emu::launch(early_return_kernel, 3, 128, 0, nullptr, out.data()); }, "early return");
  CHECK(m.find("barrier divergence") != std::string::npos && m.find("2 more blocks") != std::string::npos,
        "divergence message: %s", m.c_str());
  CHECK(!ck_emu::last_error().empty(), "last_error() empty after divergence");
  CHECK(std::count(out.begin(), out.begin() + 192, 1) == 192, "threads past the divergent barrier did not run");

  m = expect_throw<ck_emu::barrier_divergence>(
      [&] { ck_emu::launch(warp_divergent_kernel, 1, 64, 0, nullptr, out.data()); }, "warp divergence");
  CHECK(m.find("warp divergence") != std::string::npos, "warp divergence message: %s", m.c_str());

  ck_emu::set_divergence_policy(ck_emu::divergence_policy::record_only);
  ck_emu::launch(early_return_kernel, 1, 128, 0, nullptr, out.data());  // no throw
  CHECK(ck_emu::last_error().find("barrier divergence") != std::string::npos, "record_only: %s",
        ck_emu::last_error().c_str());
  ck_emu::set_divergence_policy(ck_emu::divergence_policy::throw_error);

  m = expect_throw<ck_emu::deadlock_error>(
      [&] { ck_emu::launch(deadlock_kernel, 2, 64, 0, nullptr, out.data()); }, "deadlock");
  CHECK(m.find("deadlock") != std::string::npos, "deadlock message: %s", m.c_str());

  std::fill(out.begin(), out.end(), 0);
  m = expect_throw<std::runtime_error>(
      [&] { ck_emu::launch(throwing_kernel, 3, 64, 0, nullptr, out.data()); }, "kernel exception");
  CHECK(m == "boom from (1, 5)", "kernel exception message: %s", m.c_str());
  CHECK(std::count(out.begin(), out.begin() + 64, 1) == 64 && std::count(out.begin() + 128, out.end(), 1) == 0,
        "blocks before/after the throwing block");

  expect_throw<ck_emu::usage_error>(
      [&] { ck_emu::launch(partial_mask_kernel, 1, 32, 0, nullptr, out.data()); }, "partial mask");
  Aligned<__half> buf(512, __float2half_rn(0.0f));
  m = expect_throw<ck_emu::usage_error>(
      [&] { ck_emu::launch(misaligned_wmma_kernel, 1, 32, 0, nullptr, buf.p); }, "misaligned wmma");
  CHECK(m.find("aligned") != std::string::npos, "misaligned wmma message: %s", m.c_str());
  expect_throw<ck_emu::usage_error>(
      [&] { ck_emu::launch(nested_launch_kernel, 1, 1, 0, nullptr, out.data()); }, "nested launch");
  expect_throw<ck_emu::launch_error>(
      [&] { ck_emu::launch(early_return_kernel, 0, 32, 0, nullptr, out.data()); }, "empty grid");
  expect_throw<ck_emu::launch_error>(
      [&] { ck_emu::launch(early_return_kernel, 1, 2048, 0, nullptr, out.data()); }, "block too large");
  expect_throw<ck_emu::usage_error>([] { __syncthreads(); }, "host __syncthreads");

  // The emulator is still usable after all of the above.
  run_barrier(dim3(2), dim3(96), "block 96 after errors");
  CHECK(ck_emu::last_error().empty(), "last_error() not cleared by a good launch: %s", ck_emu::last_error().c_str());
}

#endif  // !PLANT_RACE && !PLANT_OOB

#ifdef PLANT_RACE
// The write→__syncthreads()→read pattern with the barrier removed.
__global__ void racy_kernel(int* out) {
  __shared__ int buf[128];
  const int t = threadIdx.x, n = blockDim.x;
  buf[t] = t * 3;
  // __syncthreads();  -- planted bug
  out[t] = buf[(t + 1) % n];
}
#endif

#ifdef PLANT_OOB
__global__ void shared_oob_kernel(float* out) {
  __shared__ float buf[96];
  const int t = threadIdx.x;
  buf[t] = static_cast<float>(t);
  __syncthreads();
  out[t] = buf[t + 1];  // planted bug: thread 95 reads buf[96]
}
__global__ void global_oob_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = in[i] * 2.0f;  // planted bug: `<=` at the ragged edge
}
#endif

}  // namespace

int main(int argc, char** argv) {
#if defined(PLANT_RACE)
  (void)argc, (void)argv;
  std::vector<int> out(128, 0);
  ck_emu::launch(racy_kernel, 1, 128, 0, nullptr, out.data());
  std::printf("planted race kernel ran (out[0] = %d)\n", out[0]);
  return 0;
#elif defined(PLANT_OOB)
  const std::string which = argc > 1 ? argv[1] : "shared";
  if (which == "shared") {
    std::vector<float> out(96, 0.0f);
    ck_emu::launch(shared_oob_kernel, 1, 96, 0, nullptr, out.data());
    std::printf("planted shared OOB kernel ran (out[95] = %g)\n", out[95]);
  } else {
    const int n = 200;  // 2 blocks of 128: the second block's tail is past the end
    float* in = new float[n];
    float* out = new float[n + 1];
    for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i);
    ck_emu::launch(global_oob_kernel, (n + 127) / 128, 128, 0, nullptr, in, out, n);
    std::printf("planted global OOB kernel ran (out[n] = %g)\n", out[n]);
    delete[] in;
    delete[] out;
  }
  return 0;
#else
  (void)argc, (void)argv;
  struct Test {
    const char* name;
    void (*fn)();
  };
  const Test tests[] = {{"indices", test_indices},   {"barriers", test_barriers},
                        {"sync_count", test_sync_count}, {"syncwarp", test_syncwarp},
                        {"shuffles", test_shuffles}, {"atomics", test_atomics},
                        {"wmma", test_wmma},         {"ptx", test_ptx},
                        {"traffic", test_traffic},   {"misc", test_misc},
                        {"errors", test_errors}};
  for (const Test& t : tests) {
    const int before = g_failures + g_kernel_failures.load();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      t.fn();
    } catch (const std::exception& e) {
      CHECK(false, "%s: unexpected exception: %s", t.name, e.what());
    }
    const int after = g_failures + g_kernel_failures.load();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-12s %-6s %8.1f ms\n", t.name, after == before ? "ok" : "FAILED", ms);
  }
  const int total = g_failures + g_kernel_failures.load();
  if (total != 0) {
    std::printf("emu_selftest: %d failure(s)\n", total);
    return 1;
  }
  std::printf("emu_selftest: all checks passed (%s)\n", ck_emu::kExecutionModel);
  return 0;
#endif
}
