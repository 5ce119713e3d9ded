"""contrastive_kernels/proof/traffic.py counts exactly what a launch asks of memory.

Each count is checked against a hand-written @triton.jit kernel whose traffic is known by
construction (lanes × element size, 2·M·N·K per dot, grid product), and a planted change
(one more unmasked lane) must change the count. The last test runs benchmarks/traffic.py's
measuring function on a small problem.
"""
import math
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit below

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from contrastive_kernels.proof import traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="counts interpreted launches only")


@triton.jit
def _copy_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=ok, other=7.0), mask=ok)


@triton.jit
def _tile_kernel(X, Y, rows, cols, stride, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, BLOCK)
    ptr = r[:, None] * stride + c[None, :]
    ok = (r[:, None] < rows) & (c[None, :] < cols)
    tl.store(Y + ptr, tl.load(X + ptr, mask=ok, other=0.0) * 2, mask=ok)


@triton.jit
def _atomic_kernel(SCALE, X, OUT, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    s = tl.load(SCALE).to(tl.float32)  # scalar bf16 load, upcast afterwards: 2 bytes
    tl.atomic_add(OUT + offs, s * offs.to(tl.float32), mask=offs < n, sem="relaxed")


@triton.jit
def _atomic_max_cas_kernel(OUT, LOCK, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    # fp32 atomic_max is two integer RMWs (by sign) in Triton's semantics; each lane
    # is unmasked in exactly one of them, so it counts once.
    tl.atomic_max(OUT + offs, offs.to(tl.float32) - 20.0, mask=offs < n, sem="relaxed")
    tl.atomic_cas(LOCK, 0, 1)


@triton.jit
def _dot_kernel(A, B, C, ROUNDS: tl.constexpr, M: tl.constexpr, N: tl.constexpr,
                K: tl.constexpr):
    rm = tl.arange(0, M)
    rn = tl.arange(0, N)
    rk = tl.arange(0, K)
    a = tl.load(A + rm[:, None] * K + rk[None, :])
    b = tl.load(B + rk[:, None] * N + rn[None, :])
    acc = tl.zeros([M, N], tl.float32)
    for _ in range(ROUNDS):
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(C + rm[:, None] * N + rn[None, :], acc)


@triton.jit
def _grid_kernel(OUT):
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(OUT + pid, pid)


def _copy(n, block=128, dtype=torch.float16):
    x = torch.arange(block, dtype=dtype)
    y = torch.zeros(block, dtype=dtype)
    _copy_kernel[(1,)](x, y, n, BLOCK=block)
    return y


def test_masked_copy_counts_only_unmasked_lanes():
    with traffic.count_launches() as records:
        _copy(100)
    assert records == [dict(kernel="_copy_kernel", programs=1, num_warps=None,
                            bytes_loaded=200, bytes_stored=200, bytes_atomic=0, flops=0,
                            dots=0)]
    assert tuple(records[0]) == traffic.RECORD_KEYS


def test_a_different_mask_changes_the_count():
    # A planted miscount (one lane more or less) must show: the counter is not a constant.
    with traffic.count_launches() as records:
        _copy(100)
        _copy(101)
        _copy(0)
    assert [r["bytes_loaded"] for r in records] == [200, 202, 0]
    assert [r["bytes_stored"] for r in records] == [200, 202, 0]


def test_two_dimensional_mask_and_element_size():
    x = torch.ones(16, 16, dtype=torch.float32)
    y = torch.zeros(16, 16, dtype=torch.float32)
    with traffic.count_launches() as records:
        _tile_kernel[(1,)](x, y, 10, 12, 16, BLOCK=16, num_warps=2)
    assert records[0]["bytes_loaded"] == records[0]["bytes_stored"] == 10 * 12 * 4
    assert records[0]["num_warps"] == 2
    assert int(y.sum()) == 2 * 10 * 12


def test_atomic_and_scalar_load_count_pointer_element_size():
    scale = torch.tensor(1.5, dtype=torch.bfloat16)
    out = torch.zeros(64, dtype=torch.float32)
    with traffic.count_launches() as records:
        _atomic_kernel[(1,)](scale, torch.empty(0), out, 40, BLOCK=64)
    (r,) = records
    assert (r["bytes_loaded"], r["bytes_stored"], r["bytes_atomic"]) == (2, 0, 40 * 4)
    assert float(out[39]) == 1.5 * 39 and float(out[40]) == 0.0


def test_float_atomic_max_and_cas_count_each_lane_once():
    out = torch.full((64,), -100.0)
    lock = torch.zeros(1, dtype=torch.int32)
    with traffic.count_launches() as records:
        _atomic_max_cas_kernel[(1,)](out, lock, 40, BLOCK=64)
    assert records[0]["bytes_atomic"] == 40 * 4 + 4
    assert out[:40].tolist() == [i - 20.0 for i in range(40)] and int(lock) == 1


def test_dot_in_a_loop_counts_every_execution():
    a = torch.randn(16, 32)
    b = torch.randn(32, 16)
    c = torch.empty(16, 16)
    with traffic.count_launches() as records:
        _dot_kernel[(2,)](a, b, c, ROUNDS=3, M=16, N=16, K=32)
    (r,) = records
    assert r["dots"] == 2 * 3
    assert r["flops"] == 2 * 3 * 2 * 16 * 16 * 32  # 2 programs × 3 rounds × 2·M·N·K
    assert r["bytes_loaded"] == 2 * (16 * 32 + 32 * 16) * 4
    assert r["bytes_stored"] == 2 * 16 * 16 * 4
    torch.testing.assert_close(c, 3 * a @ b, rtol=1e-4, atol=1e-4)


def test_grid_programs_are_the_product_of_the_grid():
    out = torch.full((6,), -1, dtype=torch.int32)
    with traffic.count_launches() as records:
        _grid_kernel[(3, 2)](out)
    assert records[0]["programs"] == 6 and records[0]["bytes_stored"] == 6 * 4
    assert out.tolist() == list(range(6))


def _methods():
    names = traffic._HOOKED
    return ({n: interpreter.InterpreterBuilder.__dict__[n] for n in names},
            interpreter.GridExecutor.__dict__["__call__"])


def test_hooks_are_restored_on_exit_and_on_exception():
    before = _methods()
    with traffic.count_launches():
        assert traffic.hooks_installed() and _methods() != before
    assert _methods() == before and not traffic.hooks_installed()
    with pytest.raises(ZeroDivisionError):
        with traffic.count_launches():
            1 / 0
    assert _methods() == before and not traffic.hooks_installed()
    with traffic.count_launches() as records:  # usable again afterwards
        _copy(3)
    assert records[0]["bytes_loaded"] == 6


def test_nesting_fails_clearly_and_leaves_the_outer_counter_working():
    with traffic.count_launches() as outer:
        with pytest.raises(traffic.CounterActiveError, match="already active"):
            with traffic.count_launches():
                pass
        _copy(5)
    assert [r["bytes_loaded"] for r in outer] == [10]


def test_launches_outside_the_context_are_not_recorded_and_results_do_not_change():
    plain = _copy(77)
    with traffic.count_launches() as records:
        counted = _copy(77)
    _copy(9)
    assert len(records) == 1
    assert torch.equal(plain, counted)


def test_summarize_totals_and_tile_launch_programs():
    records = [dict(kernel="a", programs=8, num_warps=4, bytes_loaded=100, bytes_stored=20,
                    bytes_atomic=4, flops=0, dots=0),
               dict(kernel="b", programs=5, num_warps=8, bytes_loaded=10, bytes_stored=2,
                    bytes_atomic=0, flops=500, dots=5),
               dict(kernel="b", programs=3, num_warps=8, bytes_loaded=10, bytes_stored=2,
                    bytes_atomic=0, flops=100, dots=1)]
    s = traffic.summarize(records)
    assert (s["launches"], s["bytes"], s["flops"], s["dots"]) == (3, 148, 600, 6)
    assert s["tile_programs"] == [5, 3] and s["min_programs_of_tile_launches"] == 3
    assert s["flop_per_byte"] == pytest.approx(600 / 148)
    assert traffic.summarize([])["min_programs_of_tile_launches"] is None
    assert traffic.by_kernel(records)["b"]["programs"] == [5, 3]


def test_benchmark_measures_a_small_problem_consistently():
    import traffic as bench  # benchmarks/traffic.py
    assert bench.snapshot_kernels() > 0
    for problem in ("clip", "moco"):
        row = bench.measure(problem, scale=16, engine="triton")
        assert row["fwd"] and row["bwd"]
        total = traffic.summarize(row["fwd"] + row["bwd"])
        assert total["flops"] > 0 and total["bytes_loaded"] > 0 and total["bytes_stored"] > 0
        assert math.isfinite(total["flop_per_byte"]) and total["flop_per_byte"] > 0
        assert total["min_programs_of_tile_launches"] >= 1
        assert all(r["programs"] >= 1 for r in row["fwd"] + row["bwd"])
        # The tile products dominate: at least the 2·N·M·D of the forward logits.
        assert total["flops"] >= 2 * row["n"] * row["m"] * row["d"]
        assert "| " in bench.problem_table([row])
