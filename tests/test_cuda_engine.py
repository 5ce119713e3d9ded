"""CUDA C++ engine checks beyond the per-loss suite. On a GPU they run on CUDA tensors;
without one they run on the CPU emulation of the CUDA C++ kernels wherever their point does
not need real hardware (CONTRASTIVE_KERNELS_CUDA_EMULATE=1, as tests/test_cuda_emulated.py
runs this file), and skip with the reason otherwise (streams, compiled Triton)."""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import dispatch
from contrastive_kernels.testing import assert_close, scalar_grad_floor

pytestmark = pytest.mark.skipif(not dispatch.backend_info()["cuda"]["available"],
                                reason="needs a CUDA device and the built CUDA extension "
                                       "(or CONTRASTIVE_KERNELS_CUDA_EMULATE=1)")
EMULATED = dispatch.cuda_emulated()
DEV = torch.device("cpu" if EMULATED else "cuda")
needs_gpu = pytest.mark.skipif(EMULATED, reason="needs real CUDA streams: the emulator runs "
                                                "every launch synchronously on the CPU")


def _pair(n, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(n, d, generator=gen, dtype=torch.float64)  # noqa: E731
    return make().to(DEV), make().to(DEV)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_survive_a_large_batch_mean(dtype, backend):
    """dS of a mean over N = 4096 rows is ~1/N²: the tile's power-of-two scaling keeps it
    out of fp16's underflow (both GPU engines), so the gradient matches fp64."""
    if not dispatch.backend_info()[backend]["available"]:
        pytest.skip(f"{backend} unavailable")
    if backend == "triton" and EMULATED:
        pytest.skip("the Triton interpreter upcasts half tile products: compiled Triton only")
    # 1/N² is below fp16's smallest normal (6e-5) from N ≈ 130 on; the emulator takes a
    # smaller batch than a GPU (it runs every CUDA thread on the CPU), which still makes the
    # point.
    x, y = _pair(512 if EMULATED else 4096, 64, dtype, 0)
    grads = []
    for backend, t in ((backend, dtype), ("torch", torch.float64)):
        a, b = x.to(t).requires_grad_(), y.to(t).requires_grad_()
        ck.clip_loss(a, b, 1.0, normalize=True, backend=backend).backward()
        grads.append(a.grad)
    assert_close(grads[0], grads[1], dtype, "d image_features", grads[0].device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_and_triton_agree(dtype):
    if not dispatch.backend_info()["triton"]["available"]:
        pytest.skip("triton unavailable")
    x, y = _pair(200 if EMULATED else 1000, 96, dtype, 1)
    outs = [ck.nt_xent_loss(x.to(dtype), y.to(dtype), backend=b) for b in ("cuda", "triton")]
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-5)


@needs_gpu
def test_runs_on_the_inputs_device_and_stream():
    x, y = _pair(257, 32, torch.float32, 2)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ck.clip_loss(x, y, 10.0, backend="cuda")
    stream.synchronize()
    ref = ck.clip_loss(x, y, 10.0, backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# The pairwise engine: siglip_loss, contrastive_loss (Hadsell), triplet_margin_loss mining
# --------------------------------------------------------------------------------------
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _features(n, d, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=dtype).to(DEV)


def _labels(n, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=gen).to(DEV)


def _run(fn, backend, dtype, tensors, scalars, upstream=None):
    """Loss and gradients of fn on backend for inputs cast to dtype (fp64 reference for
    backend="torch"); scalars are 0-dim fp64 values that become learnable tensors."""
    t = torch.float64 if backend == "torch" else dtype
    xs = [x.to(t).requires_grad_() for x in tensors]
    ps = [torch.tensor(float(v), dtype=torch.float64, device=DEV, requires_grad=True)
          for v in scalars]
    out = fn(*xs, *ps, backend)
    (out if upstream is None else (out * upstream).sum()).backward()
    return out.detach(), [x.grad for x in xs], [p.grad for p in ps]


def _compare(fn, dtype, tensors, scalars, upstream=None, what=""):
    got = _run(fn, "cuda", dtype, tensors, scalars, upstream)
    ref = _run(fn, "torch", dtype, tensors, scalars, upstream)
    assert_close(got[0], ref[0], dtype, f"{what} loss", DEV)
    for i, (a, e) in enumerate(zip(got[1], ref[1])):
        assert a.dtype == dtype, (what, i, a.dtype)
        assert_close(a, e, dtype, f"{what} d input {i}", DEV)
    # A scalar's gradient sums terms of both signs: measured against their scale (harness).
    floor = scalar_grad_floor(torch.ones(()) if upstream is None else upstream.cpu(),
                              ref[0].cpu())
    for i, (a, e) in enumerate(zip(got[2], ref[2])):
        assert_close(a, e, dtype, f"{what} d scalar {i}", DEV, floor)
    return got


def _siglip(normalize, reduction="mean"):
    return lambda x, y, s, b, backend: ck.siglip_loss(x, y, s, b, reduction=reduction,
                                                      normalize=normalize, backend=backend)


def _hadsell(labels, reduction="mean"):
    return lambda x, m, backend: ck.contrastive_loss(x, labels, m, reduction=reduction,
                                                     backend=backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_siglip_matches_reference(dtype, normalize):
    # Sizes off the 64×64 tile and the 32-wide D chunk; scale and bias learnable.
    x, y = _features(203, 72, 10), _features(203, 72, 11)
    if not normalize:
        x, y = x / 8, y / 8
    _compare(_siglip(normalize), dtype, [x, y], [10.0, -10.0], what="siglip")


@pytest.mark.parametrize("dtype", DTYPES)
def test_siglip_unreduced_with_random_upstream(dtype):
    x, y = _features(130, 40, 12), _features(130, 40, 13)
    up = torch.randn(130, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _compare(_siglip(True, "none"), dtype, [x, y], [5.0, -2.0], up.to(DEV), what="siglip none")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_contrastive_matches_reference(dtype, reduction):
    x = _features(150, 48, 14) / 4
    labels = _labels(150, 5, 15)
    # margin 2.0 puts most negative pairs on both sides of the hinge at this spread.
    _compare(_hadsell(labels, reduction), dtype, [x], [2.0], what="hadsell")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contrastive_unreduced_duplicates_and_zero_rows(dtype):
    """Duplicate rows are at distance exactly 0 (the near-coincident recompute), a zero row
    is legal; random upstream gradient through the unfused backward."""
    x = _features(97, 33, 16) / 4
    x[10] = x[3]
    x[50] = x[3]
    x[20] = 0
    labels = _labels(97, 4, 17)
    labels[50] = labels[3] + 1  # a duplicate with another label: the hinge at d = 0
    up = torch.randn(97, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = _compare(_hadsell(labels, "none"), dtype, [x], [1.5], up.to(DEV), what="hadsell none")
    assert torch.isfinite(got[1][0]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_pairwise_gradients_survive_a_large_batch_mean(dtype):
    """dS of SigLIP's mean over N = 4096 rows is ~1/N: scaled by a power of two before it
    becomes the fp16 MMA operand, so it does not flush to zero."""
    n = 512 if EMULATED else 4096  # a negative pair's dS ~ σ(−10)/N flushes either way
    x, y = _features(n, 64, 18), _features(n, 64, 19)
    _compare(_siglip(True), dtype, [x, y], [10.0, -10.0], what=f"siglip {n}")


def _reference_mining(x, labels, normalize):
    from contrastive_kernels.reference import _pairwise_sq_dist, _prep
    xp = _prep(x, normalize)
    n = xp.shape[0]
    d2 = _pairwise_sq_dist(xp)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos, neg = same & ~eye, ~same
    p = d2.masked_fill(~pos, float("-inf")).max(dim=1).indices
    q = d2.masked_fill(~neg, float("inf")).min(dim=1).indices
    p = torch.where(pos.any(dim=1), p, torch.full_like(p, -1))
    q = torch.where(neg.any(dim=1), q, torch.full_like(q, -1))
    return p, q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_hardest_pairs_match_reference_indices(dtype, normalize):
    from contrastive_kernels.backends import cuda as cuda_engine
    # Coarse integer grid: many exact ties (lowest index must win), duplicates, a label
    # that occurs once (no positive: -1) and rows across several 64-row tiles.
    gen = torch.Generator().manual_seed(20)
    x = torch.randint(-2, 3, (190, 8), generator=gen).to(torch.float64).to(DEV)
    labels = _labels(190, 6, 21)
    labels[7] = 99
    xd = x.to(dtype)
    rx = cuda_engine.inverse_norms(xd, normalize)
    pos, neg = cuda_engine.hardest_pairs(xd, rx, labels)
    ref_pos, ref_neg = _reference_mining(xd.to(torch.float64), labels, normalize)
    assert pos[7].item() == -1 and ref_pos[7].item() == -1
    if not normalize:
        # Small integers: every dot and distance is exact in every dtype (fp32 MMA
        # accumulation included), so ties are real and the lowest index must win.
        assert torch.equal(pos, ref_pos) and torch.equal(neg, ref_neg)
    else:
        # Rounded distances break mathematical ties either way: the chosen pair must be
        # as far (near) as the reference's choice, within the dtype's tolerance.
        from contrastive_kernels.reference import _pairwise_sq_dist, _prep
        d2 = _pairwise_sq_dist(_prep(xd.to(torch.float64), True))
        rows = torch.arange(190, device=DEV)
        assert torch.equal(pos >= 0, ref_pos >= 0) and torch.equal(neg >= 0, ref_neg >= 0)
        ok, okn = pos >= 0, neg >= 0
        assert_close(d2[rows[ok], pos[ok]], d2[rows[ok], ref_pos[ok]], dtype, "hardest pos", DEV)
        assert_close(d2[rows[okn], neg[okn]], d2[rows[okn], ref_neg[okn]], dtype, "hardest neg",
                     DEV)
    same = labels[:, None] == labels[None, :]
    ok = pos >= 0
    assert bool(same[ok, pos[ok]].all())
    assert bool((pos[ok] != torch.arange(190, device=DEV)[ok]).all())
    assert bool((~same[neg >= 0, neg[neg >= 0]]).all())


def test_hardest_pairs_nan_and_single_class():
    from contrastive_kernels.backends import cuda as cuda_engine
    x = _features(70, 16, 22).float()
    x[5, 3] = float("nan")
    labels = torch.zeros(70, dtype=torch.int64, device=DEV)
    pos, neg = cuda_engine.hardest_pairs(x, cuda_engine.inverse_norms(x, False), labels)
    assert (neg == -1).all()                      # one class: no negatives
    assert pos[5].item() == 0                      # NaN row: every distance NaN, first wins
    assert (pos[torch.arange(70, device=DEV) != 5] == 5).all()  # NaN beats numbers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triplet_matches_reference(dtype):
    x = _features(160, 40, 23)
    labels = _labels(160, 8, 24)
    fn = lambda e, m, backend: ck.triplet_margin_loss(e, labels, m, backend=backend)  # noqa
    _compare(fn, dtype, [x], [0.5], what="triplet")


@pytest.mark.parametrize("loss", ["siglip", "hadsell"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pairwise_deterministic_backward_is_bitwise_reproducible(loss, dtype):
    x, y = _features(300, 64, 25), _features(300, 64, 26)
    labels = _labels(300, 7, 27)
    fn = _siglip(True) if loss == "siglip" else \
        (lambda a, b, s, m, backend: _hadsell(labels)(a / 8, m, backend))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = [_run(fn, "cuda", dtype, [x, y], [10.0, 1.0]) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(before)
    atomic = _run(fn, "cuda", dtype, [x, y], [10.0, 1.0])
    for a, b, c in zip([runs[0][0], *runs[0][1], *runs[0][2]],
                       [runs[1][0], *runs[1][1], *runs[1][2]],
                       [atomic[0], *atomic[1], *atomic[2]]):
        if a is None:
            continue
        assert torch.equal(a, b)  # bitwise
        assert_close(c, a, dtype, f"{loss}: atomic vs deterministic", DEV)


def test_pairwise_engine_checks_name_the_argument():
    from contrastive_kernels.backends.cuda import _ext as _C_cuda
    q = torch.randn(8, 4, device=DEV)
    r = torch.ones(8, device=DEV)
    key = torch.arange(8, device=DEV)
    params = torch.tensor([1.0, 0.0, 1.0], device=DEV)
    with pytest.raises(RuntimeError, match="params"):
        _C_cuda.pair_forward(0, q, q, r, r, params[:2], key, key, False)
    with pytest.raises(RuntimeError, match="kind"):
        _C_cuda.pair_forward(2, q, q, r, r, params, key, key, False)
    with pytest.raises(RuntimeError, match="g_row"):
        _C_cuda.pair_backward(0, q, q, r, r, params, key, key, r[:4], False, False, True, False)
    with pytest.raises(RuntimeError, match="key"):
        _C_cuda.hardest_pairs(q, r, key.int())
    with pytest.raises(RuntimeError, match="rx"):
        _C_cuda.hardest_pairs(q, r.double(), key)


@needs_gpu
def test_pairwise_runs_on_the_inputs_stream_and_never_holds_n_by_m():
    from contrastive_kernels.testing import LargestTensor
    x, y = _features(1000, 32, 28).float(), _features(1000, 32, 29).float()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), LargestTensor() as probe:
        out = ck.siglip_loss(x, y, 10.0, -10.0, backend="cuda")
    stream.synchronize()
    assert probe.largest < 1000 * 1000 // 4, (probe.largest, probe.op)
    ref = ck.siglip_loss(x.double(), y.double(), 10.0, -10.0, backend="torch")
    assert_close(out, ref, torch.float32, "siglip on a side stream", DEV)
