"""The Triton launch geometry (backends/triton/launch.py): split grids, the owned side,
gradients skipped for inputs that need none, the deterministic mode with splits, and the
CONTRASTIVE_KERNELS_LAUNCH_AS switch that gives the interpreter a GPU's launch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.backends.triton import launch
from contrastive_kernels.backends.triton import softmax as te
from contrastive_kernels.backends.triton.tiles import TileConfig
from contrastive_kernels.testing import assert_close

pytestmark = pytest.mark.skipif(not ck.backend_info()["triton"]["available"],
                                reason="triton backend unavailable")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _leaves(tensors, needs):
    return [t.detach().clone().requires_grad_(n) for t, n in zip(tensors, needs)]


def _run(fn, tensors, needs, backend, dtype=None, upstream_seed=0):
    leaves = _leaves([t if dtype is None else t.to(dtype) for t in tensors], needs)
    out = fn(*leaves, backend)
    gen = torch.Generator().manual_seed(upstream_seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    out.backward(g)
    return out.detach(), [leaf.grad for leaf in leaves]


def _check(fn, tensors, needs, what):
    out, grads = _run(fn, tensors, needs, "triton")
    ref_out, ref_grads = _run(fn, tensors, needs, "torch", dtype=torch.float64)
    assert_close(out, ref_out, tensors[0].dtype, f"{what}: loss")
    for i, (g, r, need) in enumerate(zip(grads, ref_grads, needs)):
        if not need:
            assert g is None, f"{what}: input {i} needs no gradient but got one"
            continue
        assert_close(g, r, tensors[0].dtype, f"{what}: grad {i}")
    return grads


def _bank(n, m, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
            for s in ((n, d), (n, d), (m, d))]


def _info_nce(q, p, bank, backend):
    return ck.info_nce(q, p, bank, temperature=0.1, reduction="none", backend=backend)


def _clip(a, b, backend):
    return ck.clip_loss(a, b, 10.0, reduction="none", normalize=True, backend=backend)


@pytest.mark.parametrize("needs", [(True, True, False), (True, True, True),
                                   (False, True, True), (False, False, True)])
@pytest.mark.parametrize("m", [7, 200])
def test_queue_gradients_only_where_needed(needs, m):
    # m = 200 under the interpreter: 7 column tiles of 32, at most 2 per split, so the
    # queue is split 4 ways and the partial row statistics are merged.
    _check(_info_nce, _bank(5, m, 24), needs, f"info_nce bank m={m} needs={needs}")


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_clip_gradients_only_where_needed(needs):
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(130, 40, generator=gen, dtype=torch.float64).float().to(DEVICE)
            for _ in range(2))
    _check(_clip, [a, b], needs, f"clip needs={needs}")


@pytest.mark.parametrize("n, m", [(5, 200), (130, 97)])
def test_deterministic_mode_with_splits_is_bitwise_reproducible(n, m):
    tensors = _bank(n, m, 40, seed=3)
    torch.use_deterministic_algorithms(True)
    try:
        first = _check(_info_nce, tensors, (True, True, True), "deterministic")
        again = _run(_info_nce, tensors, (True, True, True), "triton")[1]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_the_owned_side_sends_fewer_elements_through_atomics():
    # 5 queries against 200 keys in blocks of 32: owning the one row block sends all 200
    # key rows through atomics, owning the 7 key blocks sends 7 × 5 query rows.
    few, many = torch.zeros(5, 8), torch.zeros(200, 8)
    assert not te._row_owned(few, many, True, True)
    assert te._row_owned(many, few, True, True)
    # Only the gradient that is needed counts: a frozen bank is never sent through atomics.
    assert te._row_owned(few, many, True, False)
    assert not te._row_owned(many, few, False, True)


@pytest.mark.parametrize("owned, tiles, target, cap", [
    (1, 64, 132, 64), (16, 32, 132, 64), (512, 1024, 132, 64), (3, 1, 6, 2),
    (1, 16384, 132, 64), (7, 5, 6, 2), (1000, 3, 132, 64)])
def test_split_grid_fills_a_wave_and_bounds_each_split(owned, tiles, target, cap,
                                                       monkeypatch):
    monkeypatch.setattr(launch, "target_programs", lambda cfg, device: target)
    monkeypatch.setattr(launch, "max_tiles_per_split", lambda: cap)
    monkeypatch.setattr(launch, "min_tiles_per_split", lambda: 1)
    cfg = TileConfig(64, 64, 64, True, 4, 2)
    splits, per_split = launch.split_grid(owned, tiles, cfg, torch.device("cpu"))
    assert per_split <= cap
    assert (splits - 1) * per_split < tiles <= splits * per_split  # no empty split
    assert owned * splits >= min(target, owned * tiles)


@pytest.mark.parametrize("owned, tiles, splits_wanted", [
    (1, 128, 32),    # MoCo-like: one owned block, a long queue: splits of 4, not of 1
    (1, 3, 1),       # shorter than the minimum: one split of all of it
    (16, 32, 8),     # 132 programs would need splits of 3: splits of 4 (128 programs)
    (32, 128, 6)])   # a wave needs splits of 25: the minimum does not bind
def test_a_split_walks_at_least_the_minimum_tiles(owned, tiles, splits_wanted, monkeypatch):
    monkeypatch.setattr(launch, "target_programs", lambda cfg, device: 132)
    monkeypatch.setattr(launch, "max_tiles_per_split", lambda: 64)
    monkeypatch.setattr(launch, "min_tiles_per_split", lambda: 4)
    cfg = TileConfig(64, 64, 64, True, 4, 2)
    splits, per_split = launch.split_grid(owned, tiles, cfg, torch.device("cpu"))
    assert (splits, per_split >= min(4, tiles)) == (splits_wanted, True)
    assert (splits - 1) * per_split < tiles <= splits * per_split


def test_launch_as_names_an_architecture(monkeypatch):
    monkeypatch.setenv(launch.LAUNCH_AS_ENV, "sm_90")
    assert launch.launch_as() == 90
    monkeypatch.setenv(launch.LAUNCH_AS_ENV, "sm_80")
    assert launch.launch_as() == 80
    monkeypatch.setenv(launch.LAUNCH_AS_ENV, "sm_75")
    with pytest.raises(ValueError, match="LAUNCH_AS"):
        launch.launch_as()


_LAUNCH_AS_PROBE = """
import torch
from contrastive_kernels.backends.triton import launch, softmax as te
q = torch.zeros(2048, 256, dtype=torch.bfloat16)
fwd, bwd = te._tiles_for(q, q)
print(launch.sm_count(q.device), fwd == te._fit(te.tile_config(256, torch.bfloat16, arch={arch}, aligned=True)[0], 2048),
      bwd == te._fit(te.tile_config(256, torch.bfloat16, arch={arch}, aligned=True)[1], 2048), fwd.block_m)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="an interpreter switch")
@pytest.mark.parametrize("arch, sms", [(90, 132), (80, 108)])
def test_launch_as_gives_the_interpreter_the_gpu_launch(arch, sms):
    env = dict(os.environ, TRITON_INTERPRET="1", CONTRASTIVE_KERNELS_LAUNCH_AS=f"sm_{arch}")
    out = subprocess.run([sys.executable, "-c", _LAUNCH_AS_PROBE.format(arch=arch)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == [str(sms), "True", "True"]
    assert int(out[3]) > 32  # not the interpreter's test tile


@pytest.mark.parametrize("arch, programs", [(None, 3), ("sm_90", 264), ("sm_80", 216)])
def test_emulated_cuda_clip_forward_gets_the_gpu_persistent_programs(arch, programs,
                                                                      monkeypatch):
    """Off the GPU the CUDA C++ engine's CLIP forward gets a few persistent programs (so
    tests cross program boundaries), or with LAUNCH_AS the GPU's two per SM, so that the
    traffic counter measures the launch an H100 / A100 would get."""
    cuda_backend = pytest.importorskip("contrastive_kernels.backends.cuda",
                                       exc_type=ImportError)
    if arch is None:
        monkeypatch.delenv(launch.LAUNCH_AS_ENV, raising=False)
    else:
        monkeypatch.setenv(launch.LAUNCH_AS_ENV, arch)
    assert cuda_backend.column_programs(torch.device("cpu")) == programs


def test_deterministic_partials_are_capped(monkeypatch):
    """Fixed-order split partials cost splits × N × D: past the cap the splits get longer
    instead (same results, bounded memory)."""
    monkeypatch.setattr(te, "_MAX_PART_ELEMENTS", 5 * 40 * 2)  # two partials of 5 × 40
    tensors = _bank(5, 400, 40, seed=4)
    torch.use_deterministic_algorithms(True)
    try:
        _check(_info_nce, tensors, (True, True, True), "deterministic, capped partials")
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's stand-in machine")
def test_the_test_launches_cross_multi_tile_and_ragged_splits():
    """The interpreter's stand-in machine gives the tests splits of several tiles, a ragged
    last split and staggered starts (a planted wrong tile order in the backward's walk
    failed 4 of the gradient tests above)."""
    cfg = te.interpret_tiles(40)
    splits, per_split = launch.split_grid(5, 7, cfg, torch.device("cpu"))
    assert per_split >= 2 and splits * per_split > 7


def _siglip(a, b, backend):
    return ck.siglip_loss(a, b, 10.0, -10.0, reduction="none", normalize=True,
                          backend=backend)


def _pair_inputs(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=torch.float64).float().to(DEVICE)
            for _ in range(2)]


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_siglip_gradients_only_where_needed(needs):
    # 130 rows in blocks of 32 under the interpreter: 5 row blocks against 5 column tiles,
    # split in two, so the row partials are summed and the owned rows added by atomics.
    _check(_siglip, _pair_inputs(130, 40, 5), needs, f"siglip needs={needs}")


@pytest.mark.parametrize("fn", ["siglip", "contrastive"])
def test_pairwise_deterministic_mode_with_splits_is_bitwise_reproducible(fn):
    labels = torch.arange(130, device=DEVICE) % 7
    call = _siglip if fn == "siglip" else (
        lambda x, backend: ck.contrastive_loss(x, labels, reduction="none", backend=backend))
    tensors = _pair_inputs(130, 40, 6)[: 2 if fn == "siglip" else 1]
    needs = (True,) * len(tensors)
    torch.use_deterministic_algorithms(True)
    try:
        first = _check(call, tensors, needs, f"{fn} deterministic")
        again = _run(call, tensors, needs, "triton")[1]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(x, y) for x, y in zip(first, again))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's stand-in machine")
def test_pairwise_test_launches_split_the_columns():
    """The pairwise tests above run split grids (several programs per row block)."""
    from contrastive_kernels.backends.triton import pairwise as tp
    cfg = tp.tile_config(40, torch.float32)[1]
    splits, _ = launch.split_grid(triton_cdiv(130, cfg.block_m), triton_cdiv(130, cfg.block_n),
                                  cfg, torch.device("cpu"))
    assert splits > 1


def triton_cdiv(a, b):
    return -(-a // b)
