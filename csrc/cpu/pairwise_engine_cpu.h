// Entry points of the CPU pairwise engine (pairwise_engine_cpu.cpp), bound to Python next
// to the softmax engine's in softmax_engine_cpu.cpp. The interface is documented in
// contrastive_kernels/engines/pairwise.py.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace ck_cpu {

at::Tensor pair_forward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& params,
                        const at::Tensor& row_key, const at::Tensor& col_key, bool mask_diag,
                        int64_t block_m, int64_t block_n);

std::vector<at::Tensor> pair_backward(int64_t kind, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& rq, const at::Tensor& rk,
                                      const at::Tensor& params, const at::Tensor& row_key,
                                      const at::Tensor& col_key, const at::Tensor& g_row,
                                      bool mask_diag, bool normalize, bool want_rows,
                                      int64_t block_m, int64_t block_n,
                                      int64_t max_partial_elements);

std::vector<at::Tensor> hardest_pairs(const at::Tensor& x, const at::Tensor& rx,
                                      const at::Tensor& key, int64_t block_m,
                                      int64_t block_n);

at::Tensor distance_strip(const at::Tensor& x, const at::Tensor& sq, int64_t row0,
                          int64_t rows, int64_t block_n);

void add_rows(at::Tensor& dst, const at::Tensor& idx, const at::Tensor& src);

}  // namespace ck_cpu
