// Host-side tiling machinery of the CPU engines (softmax_engine_cpu.cpp and
// pairwise_engine_cpu.cpp): argument checks, the normalized copies of the features, dense
// int32 keys, the fixed split of row blocks over partitions, per-partition scratch, and the
// row-wise normalization kernels. Header-only; everything is inline.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../engine_host.h"
#include "../tile_math.h"

namespace ck_cpu {

using ck::acc_type;

inline void check_features(const at::Tensor& x, const char* name) {
  ck::check_features(x, name, c10::DeviceType::CPU);
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31), name, " has D = ", x.size(1),
              "; the BLAS tile products take 32-bit leading dimensions");
}

inline void check_blocks(int64_t block_m, int64_t block_n) {
  TORCH_CHECK(block_m > 0 && block_n > 0, "block_m and block_n must be positive, got ",
              block_m, " and ", block_n);
}

// x̂ = r·x in the accumulation dtype (r is all ones when the loss does not normalize).
inline at::Tensor hat(const at::Tensor& x, const at::Tensor& r) {
  return (x.to(acc_type(x.scalar_type())) * r.unsqueeze(1)).contiguous();
}

// Row and column keys remapped to dense int32 ids (equal keys ↔ equal ids), so that the
// tile loops compare 32-bit keys at the float vector width. O((N+M) log(N+M)).
inline std::pair<at::Tensor, at::Tensor> dense_keys(const at::Tensor& row_key,
                                             const at::Tensor& col_key) {
  const int64_t n = row_key.numel();
  auto ids = std::get<1>(at::_unique(at::cat({row_key, col_key}), false, true)).to(at::kInt);
  return {ids.slice(0, 0, n).contiguous(), ids.slice(0, n).contiguous()};
}

struct Split {  // a fixed split of `blocks` tile blocks over `parts` partitions
  int64_t blocks, parts;
  int64_t begin(int64_t p) const { return blocks * p / parts; }
  int64_t end(int64_t p) const { return blocks * (p + 1) / parts; }
};

inline Split split_blocks(int64_t n, int64_t block) {
  const int64_t blocks = (n + block - 1) / block;
  return {blocks, std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks))};
}

// Calls f(lo, hi) for the column ranges of a tile row that hold candidates: all of
// [0, w), or the two sides of the masked diagonal column.
template <typename F>
void valid_ranges(int64_t w, int64_t diag, F&& f) {
  if (diag < 0) {
    f(int64_t(0), w);
    return;
  }
  f(int64_t(0), diag);
  f(diag + 1, w);
}

// Sums a long run of tile products into one contiguous block of an output (a row block
// of dQ̂, a column block of dK̂) in two levels: up to kGroup products into block-local
// scratch (the first with beta 0), then the scratch into the output. A single running sum
// over T tiles gathers rounding in proportion to T (measured on a 1.1M-key bank, dQ̂:
// 5.7e-5 relative at 4,300 column tiles of 256, 7.8e-6 at 270 tiles of 4,096); two levels
// keep each element about kGroup + T/kGroup additions deep. The order is fixed, so the
// result stays bitwise reproducible.
template <typename T>
class BlockSum {
 public:
  static constexpr int kGroup = 32;
  BlockSum(T* out, T* scratch, int64_t elements) : out_(out), buf_(scratch), n_(elements) {}
  T* dst() const { return buf_; }                               // where the next product goes
  T beta() const { return pending_ == 0 ? T(0) : T(1); }        // ...and with which beta
  void added() {
    if (++pending_ == kGroup) flush();
  }
  void flush() {
    if (pending_ == 0) return;
    for (int64_t e = 0; e < n_; ++e) out_[e] += buf_[e];
    pending_ = 0;
  }

 private:
  T* out_;
  T* buf_;
  int64_t n_;
  int pending_ = 0;
};

// Scratch of one partition, allocated before the parallel region (as tensors, so that
// allocation tracking sees them; one per partition, so none grows with the thread count).
inline std::vector<at::Tensor> scratch(int64_t parts, int64_t elements, const at::TensorOptions& o) {
  std::vector<at::Tensor> out;
  for (int64_t p = 0; p < parts; ++p) out.push_back(at::empty({elements}, o));
  return out;
}

// ---------------------------------------------------------------------------------------
// Row-wise kernels: inverse norms and the normalization backward
// ---------------------------------------------------------------------------------------
template <typename In, typename T>
void inverse_norms_impl(const In* x, T* r, int64_t n, int64_t d) {
  at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T sq = 0;
      for (int64_t c = 0; c < d; ++c) {
        const T v = static_cast<T>(x[i * d + c]);
        sq += v * v;
      }
      r[i] = ck::inverse_norm(sq);
    }
  });
}

// dx from G = Σ_j dS_ij k̂_j (so dx̂ = scale·G), written in the input dtype.
template <typename In, typename T>
void normalize_backward_impl(const In* x, const T* r, const T* g, T scale, bool normalize,
                             In* dx, int64_t n, int64_t d) {
  at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const In* xi = x + i * d;
      const T* gi = g + i * d;
      const T ri = normalize ? r[i] : T(1);
      T radial = 0;
      if (normalize) {
        T gx = 0;
        for (int64_t c = 0; c < d; ++c) gx += gi[c] * static_cast<T>(xi[c]);
        radial = ck::radial_coef(gx, ri);
      }
      for (int64_t c = 0; c < d; ++c)
        dx[i * d + c] =
            static_cast<In>(ck::normalized_grad(scale, ri, gi[c], radial, static_cast<T>(xi[c])));
    }
  });
}

// dq, dk in the input dtype from the accumulated dQ̂, dK̂ (and the one-element scale that
// multiplies them), through the normalization backward: the last step of both engines'
// backward passes.
inline std::pair<at::Tensor, at::Tensor> finish_grads(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& rq, const at::Tensor& rk,
                                                      const at::Tensor& dq_hat,
                                                      const at::Tensor& dk_hat,
                                                      const at::Tensor& scale, bool normalize) {
  const int64_t n = q.size(0), m = k.size(0), d = q.size(1);
  at::Tensor dq = ck::output(q.sizes(), q.options()), dk = ck::output(k.sizes(), k.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "finish_grads",
                                  [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(dq_hat.scalar_type(), "finish_grads_acc", [&] {
      using T = scalar_t;
      const T s = scale.item<T>();
      normalize_backward_impl<In, T>(q.data_ptr<In>(), rq.data_ptr<T>(), dq_hat.data_ptr<T>(),
                                     s, normalize, dq.data_ptr<In>(), n, d);
      normalize_backward_impl<In, T>(k.data_ptr<In>(), rk.data_ptr<T>(), dk_hat.data_ptr<T>(),
                                     s, normalize, dk.data_ptr<In>(), m, d);
    });
  });
  return {dq, dk};
}

}  // namespace ck_cpu
