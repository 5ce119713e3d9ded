// Driver of the emulated CUDA engine (the real kernels of csrc/cuda, compiled as host C++
// against csrc/emu): calls the host entry points of engine_cuda.h on small CPU tensors and
// checks every result against a float64 ATen reference (autograd for the gradients).
// Built by tests/engine_sanitizers.py and run under ThreadSanitizer (test_cuda_emu_tsan.py)
// and AddressSanitizer+UBSan (test_cuda_emu_asan.py), also with planted bugs they must catch:
//   g++ -std=c++20 -O1 -pthread -I csrc -I <torch>/include engine_driver.cpp
//       softmax_engine_emu.o pairwise_engine_emu.o -L<torch>/lib -ltorch -ltorch_cpu -lc10
// (the two engine objects built with -DCK_CUDA_EMULATE -include csrc/emu/cuda_emu.h).
//
//   engine_driver [FILTER]   runs the groups whose name ("fp32/ragged/softmax", ...) contains
//                            FILTER, or one of its comma-separated parts ("fp32/,bf16/"); all
//                            without one; exit code 0 only if every check passed.
//
// Shapes: "ragged" N=70, M=45, D=40 (partial row and column tiles, a 64-wide panel loaded in
// two 32-wide chunks, the second partial), "masked" N=45, M=70 (q = the first N rows of k,
// mask_diag), "tile" N=M=20, D=16, k is q (one partial tile, one chunk); "split" N=70, M=150
// (three 64-wide tiles, five 32-wide fp64 ones, the last partial) with the column range split
// into one-tile ranges (CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES=1:
// merged row statistics, atomic / per-split partial gradient rows, staggered starts);
// "panels" D=300 (two feature panels: the forward loops over them, the backward has one block
// per gradient panel) with split ranges; "groups" N=8, M=2200 in one range of 35 tiles (the
// blocked sums flush two groups). Dtypes fp32 (SIMT FMA), fp16 and bf16 (mma.sync from
// ldmatrix), fp64 (SIMT, 32×32 tiles). Outputs are poisoned (CONTRASTIVE_KERNELS_POISON=1), so
// an element the engine fails to write is NaN and fails its check. Backward checks: atomic
// and deterministic, the deterministic one rerun and compared bitwise, and dQ only / dK only
// (need_dq / need_dk: the other gradient must come back as a (0, D) tensor).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda/engine_cuda.h"

namespace {

int g_checks = 0, g_failures = 0;

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

void report(bool ok, const std::string& name, const std::string& detail) {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s %s %s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
}

// max |got - ref| / max(max |ref|, 1): relative to the vector's scale, absolute below 1.
void close(const std::string& name, const at::Tensor& got, const at::Tensor& ref, double tol) {
  if (!got.defined() || got.sizes() != ref.sizes()) {
    report(false, name, "shape " + (got.defined() ? std::string(c10::str(got.sizes())) : "?") +
                            " != " + std::string(c10::str(ref.sizes())));
    return;
  }
  const at::Tensor g = got.detach().to(at::kDouble), r = ref.detach().to(at::kDouble);
  double err = 0, scale = 1;
  if (r.numel() > 0) {
    err = (g - r).abs().max().item<double>();  // NaN if got has a NaN
    scale = std::max(1.0, r.abs().max().item<double>());
  }
  const double rel = err / scale;
  report(rel <= tol, name, "err " + fmt(rel) + " (tol " + fmt(tol) + ")");
}

double tolerance(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return 1e-12;
    case at::kFloat: return 1e-5;
    case at::kBFloat16: return 3e-2;  // dS and the operands rounded to bf16 (8-bit mantissa)
    default: return 5e-3;  // half inputs: dS and the operands are rounded to fp16
  }
}

const char* dtype_name(at::ScalarType t) {
  return t == at::kDouble ? "fp64" : t == at::kFloat ? "fp32" : t == at::kBFloat16 ? "bf16" : "fp16";
}

// Bitwise equality of two runs (the deterministic mode's promise).
void same_bits(const std::string& name, const at::Tensor& a, const at::Tensor& b) {
  auto bytes = [](const at::Tensor& t) { return t.contiguous().reshape({-1}).view(at::kByte); };
  const bool ok = a.defined() && b.defined() && a.sizes() == b.sizes() &&
                  (a.numel() == 0 || at::equal(bytes(a), bytes(b)));
  report(ok, name, ok ? "bitwise equal" : "reruns differ");
}

struct Case {
  const char* name;
  int64_t n, m, d;
  bool mask_diag;  // q = k[:n] (or k is q)
  bool shared;     // k is q
  bool need_col;
  bool extra;
  int64_t programs;
  int split_min_tiles;  // CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES for the case (0: default)
  unsigned dtypes;      // bit mask over kDtypes
  bool extras;          // also: dQ-only / dK-only backward, deterministic reruns compared bitwise
  unsigned kinds;       // bit mask: 1 softmax, 2 siglip, 4 hadsell, 8 hardest
};

const at::ScalarType kDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble};
constexpr unsigned kAllDtypes = 15, kAllKinds = 15;

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);
const at::TensorOptions kI64 = at::TensorOptions().dtype(at::kLong);

// Inputs of one (dtype, case): features in the input dtype, their float64 values (exact),
// the engine's inverse norms, keys.
struct Inputs {
  at::ScalarType dtype, acc;
  at::Tensor q, k, qd, kd, rq, rk, row_key, col_key, valid, match;
};

at::Tensor normalized(const at::Tensor& x) {
  return x / x.norm(2, {1}, true).clamp_min(1e-12);
}

// Pairwise validity: mask_diag leaves out j == i.
at::Tensor valid_mask(int64_t n, int64_t m, bool mask_diag) {
  at::Tensor v = at::ones({n, m}, at::TensorOptions().dtype(at::kBool));
  if (mask_diag) v = v & (at::arange(n, kI64).unsqueeze(1) != at::arange(m, kI64).unsqueeze(0));
  return v;
}

Inputs make_inputs(at::ScalarType dtype, const Case& c) {
  Inputs in;
  in.dtype = dtype;
  in.acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor kd = at::randn({c.m, c.d}, kF64);
  at::Tensor qd = c.mask_diag ? kd.narrow(0, 0, c.n).clone() : at::randn({c.n, c.d}, kF64);
  in.k = kd.to(dtype).contiguous();
  in.q = c.shared ? in.k : qd.to(dtype).contiguous();
  in.kd = in.k.to(at::kDouble);
  in.qd = in.q.to(at::kDouble);
  in.col_key = at::randint(0, 4, {c.m}, kI64);
  in.row_key = c.mask_diag ? in.col_key.narrow(0, 0, c.n).clone() : at::randint(0, 4, {c.n}, kI64);
  if (c.shared) in.row_key = in.col_key;
  in.rq = ck_cuda::inverse_norms_cuda(in.q, true);
  in.rk = c.shared ? in.rq : ck_cuda::inverse_norms_cuda(in.k, true);
  in.valid = valid_mask(c.n, c.m, c.mask_diag);
  in.match = in.row_key.unsqueeze(1) == in.col_key.unsqueeze(0);
  return in;
}

// ---- softmax family ----------------------------------------------------------------------
void softmax_group(const std::string& tag, const Case& c, const Inputs& in) {
  const double tol = tolerance(in.dtype);
  const auto acc = at::TensorOptions().dtype(in.acc);
  close(tag + ".inverse_norms", in.rq, 1.0 / in.qd.norm(2, {1}).clamp_min(1e-12), tol);
  const double scale_v = 7.5;
  at::Tensor scale = at::full({}, scale_v, acc);
  at::Tensor extra = c.extra ? at::randn({c.n}, kF64).to(in.acc) : at::Tensor();
  const c10::optional<at::Tensor> extra_opt =
      c.extra ? c10::optional<at::Tensor>(extra) : c10::nullopt;

  auto fwd = ck_cuda::forward_cuda(in.q, in.k, in.rq, in.rk, scale, in.row_key, in.col_key,
                                   extra_opt, c.mask_diag, c.need_col, c.programs);
  const at::Tensor g_lse = at::randn({c.n}, kF64), g_pos = at::randn({c.n}, kF64) * 0.3;
  const at::Tensor g_clse = c.need_col ? at::randn({c.m}, kF64) : at::Tensor();

  // Reference: autograd through F.normalize, the scaled logits and the three statistics.
  at::Tensor qv = in.qd.clone().requires_grad_(true);
  at::Tensor kv = in.kd.clone().requires_grad_(true);
  at::Tensor sv = at::full({}, scale_v, kF64).requires_grad_(true);
  const at::Tensor S = sv * at::matmul(normalized(qv), normalized(c.shared ? qv : kv).t());
  const at::Tensor neg_inf = at::full({}, -std::numeric_limits<double>::infinity(), kF64);
  const at::Tensor Sm = at::where(in.valid, S, neg_inf);
  at::Tensor lse = c.extra ? at::cat({extra.to(at::kDouble).unsqueeze(1), Sm}, 1).logsumexp({1})
                           : Sm.logsumexp({1});
  at::Tensor pos = at::where(in.valid & in.match, S, at::zeros({}, kF64)).sum({1});
  at::Tensor loss = (g_lse * lse).sum() + (g_pos * pos).sum();
  at::Tensor clse;
  if (c.need_col) {
    clse = Sm.logsumexp({0});
    loss = loss + (g_clse * clse).sum();
  }
  loss.backward();
  close(tag + ".forward.lse", fwd[0], lse, tol);
  close(tag + ".forward.pos", fwd[1], pos, tol);
  if (c.need_col) {
    close(tag + ".forward.clse", fwd[2], clse, tol);
  } else {
    report(fwd[2].numel() == 0, tag + ".forward.clse_empty", "");
  }
  const at::Tensor e = at::empty({0}, acc);
  auto run = [&](bool deterministic, bool need_dq, bool need_dk) {
    return ck_cuda::backward_cuda(in.q, in.k, in.rq, in.rk, scale, in.row_key, in.col_key,
                                  fwd[0], c.need_col ? fwd[2] : e, g_lse.to(in.acc),
                                  g_pos.to(in.acc), c.need_col ? g_clse.to(in.acc) : e,
                                  c.mask_diag, /*normalize=*/true, deterministic, need_dq,
                                  need_dk);
  };
  for (bool deterministic : {false, true}) {
    const std::string name = tag + (deterministic ? ".backward.deterministic" : ".backward.atomic");
    auto bwd = run(deterministic, true, true);
    if (c.shared) {  // k is q: the engine's two gradients add up
      close(name + ".dq+dk", bwd[0].to(at::kDouble) + bwd[1].to(at::kDouble), qv.grad(), tol);
    } else {
      close(name + ".dq", bwd[0], qv.grad(), tol);
      close(name + ".dk", bwd[1], kv.grad(), tol);
    }
    close(name + ".dscale", bwd[2], sv.grad(), tol);
    if (deterministic && c.extras) {
      auto again = run(true, true, true);
      for (int i = 0; i < 3; ++i) same_bits(name + ".rerun." + std::to_string(i), bwd[i], again[i]);
    }
  }
  if (!c.shared && c.extras) {
    // A frozen key bank (dQ only: recompute + dQ, no dK work) and frozen queries (dK only).
    for (bool deterministic : {false, true}) {
      const std::string name = tag + (deterministic ? ".backward.deterministic" : ".backward.atomic");
      auto only_q = run(deterministic, true, false);
      close(name + ".dq_only.dq", only_q[0], qv.grad(), tol);
      report(only_q[1].size(0) == 0, name + ".dq_only.dk_empty", "");
      close(name + ".dq_only.dscale", only_q[2], sv.grad(), tol);
      auto only_k = run(deterministic, false, true);
      report(only_k[0].size(0) == 0, name + ".dk_only.dq_empty", "");
      close(name + ".dk_only.dk", only_k[1], kv.grad(), tol);
      close(name + ".dk_only.dscale", only_k[2], sv.grad(), tol);
    }
  }
}

// ---- pairwise engine ---------------------------------------------------------------------
void pairwise_group(const std::string& tag, const Case& c, const Inputs& in, int64_t kind) {
  const double tol = tolerance(in.dtype);
  const bool normalize = kind == 0 || c.mask_diag;  // HADSELL on raw features in "ragged"
  const double scale_v = 4.0, bias_v = -1.5;
  const double margin_v = normalize ? 1.3 : std::sqrt(2.0 * c.d);
  const auto acc = at::TensorOptions().dtype(in.acc);
  const at::Tensor params = at::tensor({scale_v, bias_v, margin_v}, kF64).to(in.acc);
  const at::Tensor ones_q = at::ones({c.n}, acc), ones_k = at::ones({c.m}, acc);
  const at::Tensor rq = normalize ? in.rq : ones_q;
  const at::Tensor rk = normalize ? in.rk : (c.shared ? ones_q : ones_k);
  const at::Tensor g_row = at::randn({c.n}, kF64);

  at::Tensor qv = in.qd.clone().requires_grad_(true);
  at::Tensor kv = in.kd.clone().requires_grad_(true);
  at::Tensor pv = at::tensor({scale_v, bias_v, margin_v}, kF64).requires_grad_(true);
  const at::Tensor qh = normalize ? normalized(qv) : qv * 1.0;
  const at::Tensor kh = c.shared ? qh : (normalize ? normalized(kv) : kv * 1.0);
  at::Tensor term;
  if (kind == 0) {  // SigLIP: softplus(-z·u), u = scale·cos + bias
    const at::Tensor u = pv[0] * at::matmul(qh, kh.t()) + pv[1];
    const at::Tensor v = at::where(in.match, -u, u);
    term = v.clamp_min(0) + at::log1p(at::exp(-v.abs()));
  } else {  // Hadsell: d² (difference form) or relu(margin − d)²
    const at::Tensor d2 = (qh.unsqueeze(1) - kh.unsqueeze(0)).pow(2).sum({2});
    const at::Tensor d2s = at::where(in.valid, d2, at::ones({}, kF64));  // no sqrt'(0)
    const at::Tensor hinge = (pv[2] - d2s.sqrt()).clamp_min(0).pow(2);
    term = at::where(in.match, d2s, hinge);
  }
  const at::Tensor rows = at::where(in.valid, term, at::zeros({}, kF64)).sum({1});
  (g_row * rows).sum().backward();

  const std::string ktag = tag + (kind == 0 ? ".siglip" : ".hadsell");
  at::Tensor got = ck_cuda::pair_forward_cuda(kind, in.q, in.k, rq, rk, params, in.row_key,
                                              in.col_key, c.mask_diag);
  close(ktag + ".forward.rows", got, rows, tol);
  auto run = [&](bool deterministic, bool need_dk) {
    return ck_cuda::pair_backward_cuda(kind, in.q, in.k, rq, rk, params, in.row_key, in.col_key,
                                       g_row.to(in.acc), c.mask_diag, normalize,
                                       /*want_rows=*/!deterministic, deterministic, true, need_dk);
  };
  for (bool deterministic : {false, true}) {
    const std::string name =
        ktag + (deterministic ? ".backward.deterministic" : ".backward.atomic");
    auto bwd = run(deterministic, true);
    if (!deterministic) close(name + ".rows", bwd[0], rows, tol);
    if (c.shared) {
      close(name + ".dq+dk", bwd[1].to(at::kDouble) + bwd[2].to(at::kDouble), qv.grad(), tol);
    } else {
      close(name + ".dq", bwd[1], qv.grad(), tol);
      close(name + ".dk", bwd[2], kv.grad(), tol);
    }
    close(name + ".dparams", bwd[3], pv.grad(), tol);
    if (deterministic && c.extras) {
      auto again = run(true, true);
      for (int i = 1; i < 4; ++i) same_bits(name + ".rerun." + std::to_string(i), bwd[i], again[i]);
    }
    if (!c.shared && c.extras) {  // a frozen k: no dK work, dk undefined
      auto only_q = run(deterministic, false);
      close(name + ".dq_only.dq", only_q[1], qv.grad(), tol);
      report(only_q[2].size(0) == 0, name + ".dq_only.dk_empty", "");
    }
  }
}

// Batch-hard mining: each reported index must be a valid candidate at the best distance
// (within the dtype's tolerance: near-ties may legitimately resolve differently), -1 only
// where there is no candidate.
void hardest_group(const std::string& tag, const Case& c, const Inputs& in) {
  // Distances come from exact dots of the (exactly representable) inputs in fp32 or fp64.
  const double tol = in.dtype == at::kDouble ? 1e-9 : 1e-4;
  auto got = ck_cuda::hardest_pairs_cuda(in.q, in.rq, in.row_key);
  const at::Tensor xh = normalized(in.qd);
  const at::Tensor d2 = (xh.unsqueeze(1) - xh.unsqueeze(0)).pow(2).sum({2});
  const at::Tensor key = in.row_key;
  const int64_t n = c.n;
  auto a = d2.accessor<double, 2>();
  auto kk = key.accessor<int64_t, 1>();
  for (int which = 0; which < 2; ++which) {
    const at::Tensor idx = got[which];
    bool ok = idx.sizes() == at::IntArrayRef{n} && idx.scalar_type() == at::kLong;
    std::string why;
    for (int64_t i = 0; ok && i < n; ++i) {
      const bool want_pos = which == 0;
      double best = want_pos ? -1.0 : std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        if (j == i || (kk[j] == kk[i]) != want_pos) continue;
        best = want_pos ? std::max(best, a[i][j]) : std::min(best, a[i][j]);
      }
      const int64_t j = idx[i].item<int64_t>();
      const bool none = want_pos ? best < 0 : best == std::numeric_limits<double>::infinity();
      if (none) {
        ok = j == -1;
      } else {
        ok = j >= 0 && j < n && j != i && (kk[j] == kk[i]) == want_pos &&
             std::abs(a[i][j] - best) <= tol;
      }
      if (!ok) why = "row " + std::to_string(i) + " got " + std::to_string(j);
    }
    report(ok, tag + (which == 0 ? ".hardest.pos" : ".hardest.neg"), why);
  }
}

// The filter is a comma-separated list of substrings; a group runs when any one matches.
bool selected(const std::string& name, const char* filter) {
  if (filter == nullptr) return true;
  const std::string list(filter);
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string part = list.substr(start, end - start);
    if (!part.empty() && name.find(part) != std::string::npos) return true;
    start = end + 1;
  }
  return false;
}

void guarded(const std::string& name, const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    fn();
  } catch (const std::exception& e) {
    report(false, name, std::string("threw: ") + e.what());
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("time %s %.1f s\n", name.c_str(), s);
}

}  // namespace

int main(int argc, char** argv) {
  setenv("CONTRASTIVE_KERNELS_POISON", "1", 1);
  at::set_num_threads(1);  // the reference's ATen ops: no OpenMP threads beside the emulator's
  const char* filter = argc > 1 ? argv[1] : nullptr;
  const Case cases[] = {
      // fp32, fp16, bf16, fp64 = bits 1, 2, 4, 8
      {"ragged", 70, 45, 40, false, false, true, true, 1, 0, kAllDtypes, true, kAllKinds},
      {"masked", 45, 70, 40, true, false, true, false, 3, 0, kAllDtypes, false, kAllKinds},
      {"tile", 20, 20, 16, true, true, false, false, 1, 0, kAllDtypes, false, kAllKinds},
      {"split", 70, 150, 40, false, false, true, true, 1, 1, 1 | 4 | 8, true, kAllKinds},
      {"panels", 40, 70, 300, true, false, true, false, 2, 1, 1 | 4, false, kAllKinds},
      {"groups", 8, 2200, 16, false, false, true, false, 1, 64, 1 | 4, false, 1 | 2},
  };
  int groups = 0;
  for (int di = 0; di < 4; ++di) {
    const at::ScalarType dtype = kDtypes[di];
    for (const Case& c : cases) {
      if (!((c.dtypes >> di) & 1u)) continue;
      if (c.split_min_tiles > 0) {
        setenv("CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES", std::to_string(c.split_min_tiles).c_str(), 1);
      } else {
        unsetenv("CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES");
      }
      const std::string tag = std::string(dtype_name(dtype)) + "/" + c.name;
      const bool soft = (c.kinds & 1u) && selected(tag + "/softmax", filter);
      const bool sig = (c.kinds & 2u) && selected(tag + "/siglip", filter);
      const bool had = (c.kinds & 4u) && selected(tag + "/hadsell", filter);
      const bool hard = (c.kinds & 8u) && selected(tag + "/hardest", filter);
      if (!soft && !sig && !had && !hard) continue;
      at::manual_seed(1234);
      Inputs in;
      bool made = false;
      guarded(tag + ".inputs", [&] {
        in = make_inputs(dtype, c);
        made = true;
      });
      if (!made) continue;
      if (soft) ++groups, guarded(tag + ".softmax", [&] { softmax_group(tag, c, in); });
      if (sig) ++groups, guarded(tag + ".siglip", [&] { pairwise_group(tag, c, in, 0); });
      if (had) ++groups, guarded(tag + ".hadsell", [&] { pairwise_group(tag, c, in, 1); });
      if (hard) ++groups, guarded(tag + ".hardest", [&] { hardest_group(tag, c, in); });
    }
  }
  if (groups == 0) {
    std::printf("engine_driver: no group matches the filter\n");
    return 2;
  }
  if (g_failures == 0) {
    std::printf("engine_driver: all %d checks passed (%d groups)\n", g_checks, groups);
    return 0;
  }
  std::printf("engine_driver: %d of %d checks FAILED\n", g_failures, g_checks);
  return 1;
}
