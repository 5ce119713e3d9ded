"""Shared machinery of the per-loss test files: inputs, the reference comparison and the
standard test set that every softmax-family loss gets.

A loss is described by a ``LossCase``: how to build fresh random inputs for a requested
(N, D) and dtype. Comparisons run the fused backend on the test dtype and the reference
(``backend="torch"``) on float64 copies of the very same values, with random upstream
gradients, and check the loss, every input gradient and every scalar-tensor gradient
against the one tolerance table in ``contrastive_kernels.testing``.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import assert_close, scalar_grad_floor

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_BACKENDS = [b for b in ("triton", "cuda", "cpu") if ck.backend_info()[b]["available"]]
# Odd sizes on purpose: 1, 2, 3, tile boundary ± 1, several tiles; D below, at and above a
# 16-wide dot and above the interpreter's one-chunk limit.
SHAPES = [(1, 1), (2, 7), (3, 65), (33, 7), (33, 1), (130, 65)]
HALF_AND_DOUBLE = [torch.float16, torch.bfloat16, torch.float64]


def generator(*key) -> torch.Generator:
    """A generator seeded from the test's own parameters: fresh inputs per case."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(shape, gen, dtype=torch.float32) -> torch.Tensor:
    # Generated in fp64 on the CPU then cast, so every dtype sees the same values.
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)


@dataclass
class LossCase:
    """make(n, d, dtype, gen) -> (args, kwargs): args are tensors or scalars in call order."""
    fn: Callable
    make: Callable
    reductions: tuple = ("mean", "sum", "none")
    scalar_names: tuple = field(default_factory=tuple)  # kwargs that may be tensors
    normalizes: bool = True  # features are L2-normalized inside the loss
    # The size a feature gradient's error is measured against when it is smaller (see
    # relative_error): for gradients that cancel to far below their terms' size.
    grad_floor: float = 1e-30
    # Per-row bound on |dℓ_i/dτ| for the temperature's gradient error, when the loss's
    # own size (scalar_grad_floor) understates its cancelling terms: f(kwargs) -> bound.
    temperature_terms: Optional[Callable] = None


def estimator_temperature_terms(beta: float) -> Callable:
    """temperature_terms of the debiased / hard-negative estimator: with s = 1/τ, each row's
    dℓ/ds is a sum of terms bounded by 1 + β, β (the two negative sums' E[cos]) and 1 (the
    positive), so |dℓ/dτ| terms are ≤ (2 + 2β)/τ². On degenerate inputs (d = 1: every
    cosine ±1) they cancel to e^{−s}-sized remainders, below what fp32 log-sum-exps of
    size ~(1+β)s (half an ulp: ~1e-6) resolve."""
    def terms(kwargs) -> float:
        return (2 + 2 * beta) / float(kwargs["temperature"]) ** 2
    return terms


def loss_fn(problem: str):
    """The public loss of a problem name of contrastive_kernels.problems (info_nce_bank is
    info_nce with negative_keys)."""
    return getattr(ck, "info_nce" if problem == "info_nce_bank" else problem)


def _leaf(x, dtype=None):
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        return x
    y = x.detach().clone() if dtype is None else x.detach().to(dtype)
    return y.requires_grad_(True)


def _grad_leaves(values):
    return [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad]


def compare(case: LossCase, backend: str, n: int, d: int, dtype: torch.dtype,
            reduction: str, gen: torch.Generator) -> None:
    """Fused (backend, dtype) vs the float64 reference on identical values; the scalar
    parameters are passed as tensors so that their gradients are compared too."""
    args, kwargs = case.make(n, d, dtype, gen)
    kwargs = {k: (torch.tensor(v, dtype=torch.float64, device=DEVICE)
                  if k in case.scalar_names and not isinstance(v, torch.Tensor) else v)
              for k, v in kwargs.items()}
    f_args = [_leaf(a) for a in args]
    f_kw = {k: _leaf(v) for k, v in kwargs.items()}
    r_args = [_leaf(a, torch.float64) for a in args]
    r_kw = {k: _leaf(v, torch.float64) for k, v in kwargs.items()}
    out = case.fn(*f_args, reduction=reduction, backend=backend, **f_kw)
    ref = case.fn(*r_args, reduction=reduction, backend="torch", **r_kw)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == want_dtype, f"loss dtype {out.dtype}, expected {want_dtype}"
    assert_close(out, ref, dtype, "loss", DEVICE)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    f_leaves = _grad_leaves(f_args + list(f_kw.values()))
    r_leaves = _grad_leaves(r_args + list(r_kw.values()))
    f_grads = torch.autograd.grad(out, f_leaves, upstream.to(out.dtype), allow_unused=True)
    r_grads = torch.autograd.grad(ref, r_leaves, upstream, allow_unused=True)
    for i, (leaf, fg, rg) in enumerate(zip(f_leaves, f_grads, r_grads)):
        if rg is None:
            assert fg is None or not fg.any(), f"grad {i}: reference has none, fused nonzero"
            continue
        assert fg is not None, f"grad {i}: fused backend returned no gradient"
        assert fg.dtype == leaf.dtype, f"grad {i} dtype {fg.dtype} != input {leaf.dtype}"
        if rg.abs().max() < 1e-9:
            # The exact gradient is 0 (a normalized 1-D feature is ±1 whatever its value;
            # a row with a single candidate has p = 1), so both sides hold only rounding
            # noise: a few ulps of the summed upstream terms (scale ≤ 32, features of
            # order 1), divided by |x_j| where a normalization's Jacobian amplifies it,
            # and by τ² for a temperature (d s/dτ = −s/τ).
            eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
            terms = 32 * float(upstream.abs().sum().cpu())
            x = leaf.detach().double().abs()
            if leaf.dim() == 0:
                size = min(float(x), 1.0) ** 2 if float(x) > 0 else 1.0
            elif case.normalizes and d == 1:
                size = x.clamp_min(1e-30)
            else:
                size = 1.0 / max(float(x.max()), 1.0)
            bound = 16 * eps * terms / size
            assert (fg.double().abs() <= bound).all(), f"grad {i}: {fg} should be ~0"
            continue
        floor = scalar_grad_floor(upstream, ref) if leaf.dim() == 0 else case.grad_floor
        if leaf.dim() == 0 and case.temperature_terms is not None and \
                leaf is f_kw.get("temperature"):
            floor = max(floor, float(upstream.abs().sum()) * case.temperature_terms(kwargs))
        assert_close(fg, rg, dtype, f"grad {i} (shape {tuple(leaf.shape)})", DEVICE, floor)


def gradcheck(case: LossCase, backend: str, n: int, d: int, reduction: str,
              gen: torch.Generator) -> None:
    """fp64 torch.autograd.gradcheck through the kernels, scalars as tensors."""
    args, kwargs = case.make(n, d, torch.float64, gen)
    scalar_keys = [k for k in case.scalar_names if k in kwargs]
    scalars = [torch.tensor(float(kwargs[k]), dtype=torch.float64, device=DEVICE,
                            requires_grad=True) for k in scalar_keys]
    tensors = [_leaf(a) for a in args]
    inputs = tuple(t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad)

    def loss(*leaves):
        it = iter(leaves)
        call = [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t
                for t in tensors]
        kw = dict(kwargs)
        kw.update({k: next(it) for k in scalar_keys})
        return case.fn(*call, reduction=reduction, backend=backend, **kw)

    fast = DEVICE.type == "cpu"  # interpreter: full Jacobians would take minutes
    assert torch.autograd.gradcheck(loss, inputs + tuple(scalars), eps=1e-6, atol=1e-7,
                                    rtol=1e-5, fast_mode=fast)


def loss_tests(case: LossCase, prefix: str = "") -> dict:
    """The standard tests for one loss as {test name: function}; a test module collects
    them with ``globals().update(loss_tests(CASE))`` (``prefix`` names a second case)."""
    backends = pytest.mark.parametrize("backend", KERNEL_BACKENDS)

    @backends
    @pytest.mark.parametrize("n,d", SHAPES)
    def test_matches_reference_none(backend, n, d):
        """Every odd shape, reduction="none", random upstream gradient, fp32."""
        compare(case, backend, n, d, torch.float32, "none",
                generator(case.fn.__name__, "none", n, d))

    @backends
    @pytest.mark.parametrize("reduction", [r for r in case.reductions if r != "none"])
    def test_matches_reference_reduced(backend, reduction):
        compare(case, backend, 33, 7, torch.float32, reduction,
                generator(case.fn.__name__, reduction))

    @backends
    @pytest.mark.parametrize("dtype", HALF_AND_DOUBLE)
    @pytest.mark.parametrize("n,d", [(33, 65), (130, 7)])
    def test_dtypes(backend, dtype, n, d):
        """Half inputs: fp32 loss, grads in the input dtype, table tolerance."""
        compare(case, backend, n, d, dtype, "none", generator(case.fn.__name__, dtype, n, d))

    @backends
    @pytest.mark.parametrize("reduction", ["mean", "none"])
    def test_gradcheck(backend, reduction):
        gradcheck(case, backend, 4, 3, reduction, generator(case.fn.__name__, "gc", reduction))

    @backends
    def test_deterministic_two_pass_backward(backend):
        """torch.use_deterministic_algorithms selects the atomic-free two-pass backward:
        same values, and bitwise-identical gradients on a rerun."""
        prior = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            compare(case, backend, 33, 65, torch.float32, "none",
                    generator(case.fn.__name__, "det"))
            grads = [_grads_of(case, backend, generator(case.fn.__name__, "bits"))
                     for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(prior)
        for a, b in zip(*grads):
            assert torch.equal(a, b)

    @backends
    def test_nan_propagates(backend):
        """A NaN in the last row of the last feature tensor (a key, bank or hard-negative
        row, never only the anchor's own positive logit): the rows that are NaN under
        "none" are those of the float64 reference, and the mean is NaN. The full matrix
        (every input, row position, ±Inf, scalars, gradients) is tests/test_nonfinite.py."""
        args, kwargs = case.make(33, 4, torch.float32, generator(case.fn.__name__, "nan"))
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        last = max(i for i, a in enumerate(args) if isinstance(a, torch.Tensor)
                   and a.dtype.is_floating_point)
        args[last].view(-1, args[last].shape[-1])[-1, 1] = float("nan")
        ref_args = [_leaf(a, torch.float64) if isinstance(a, torch.Tensor) else a
                    for a in args]
        for reduction in ("none", "mean"):
            if reduction not in case.reductions:
                continue
            out = case.fn(*args, reduction=reduction, backend=backend, **kwargs)
            ref = case.fn(*ref_args, reduction=reduction, backend="torch", **kwargs)
            assert torch.equal(torch.isfinite(out).cpu(), torch.isfinite(ref).cpu())
        assert torch.isnan(out).all()

    @backends
    def test_zero_row_is_finite(backend):
        args, kwargs = case.make(5, 4, torch.float32, generator(case.fn.__name__, "zero"))
        args = [_leaf(a) for a in args]
        with torch.no_grad():
            args[0][0].zero_()
        out = case.fn(*args, reduction="mean", backend=backend, **kwargs)
        out.backward()
        assert torch.isfinite(out)
        for leaf in _grad_leaves(args):
            assert torch.isfinite(leaf.grad).all()

    tests = (test_matches_reference_none, test_matches_reference_reduced, test_dtypes,
             test_gradcheck, test_deterministic_two_pass_backward, test_nan_propagates,
             test_zero_row_is_finite)
    tag = f"test_{prefix}_" if prefix else "test_"
    return {tag + t.__name__[len("test_"):]: t for t in tests}


def _grads_of(case, backend, gen):
    args, kwargs = case.make(33, 65, torch.float32, gen)
    args = [_leaf(a) for a in args]
    out = case.fn(*args, reduction="sum", backend=backend, **kwargs)
    return torch.autograd.grad(out, _grad_leaves(args))


def check_triplet(x, labels, backend, margin, normalize, reduction="mean") -> bool:
    """Batch-hard triplet where the hardest rows may tie at the inputs' precision (norms
    spanning many decades, normalized 1-D rows that are all ±1): the fp64 reference may
    then break a tie the other way. Checked: every mined row is hardest to within the
    rounding of the distances; the loss equals the reference's; and where the mined rows
    are the reference's own (returns True), the caller can run the whole comparison
    (gradients too) with ``compare``."""
    from contrastive_kernels.engines import library
    from contrastive_kernels.testing import assert_close as close
    pos, neg = library.hardest_pairs(x, labels, normalize, backend)
    xd = x.detach().double()
    if normalize:
        xd = torch.nn.functional.normalize(xd, dim=-1, eps=1e-12)
    d = torch.cdist(xd, xd)
    n = len(x)
    same = labels[:, None] == labels[None, :]
    other = ~same
    same = same & ~torch.eye(n, dtype=torch.bool, device=x.device)
    rows = torch.arange(n, device=x.device)
    norms = xd.norm(dim=1)
    slack = 8 * torch.finfo(x.dtype if x.dtype != torch.bfloat16 else torch.float32).eps \
        * (norms[:, None] + norms[None, :]).amax(1)
    far = torch.where(same, d, -1.0).amax(1)
    near = torch.where(other, d, float("inf")).amin(1)
    valid = same.any(1) & other.any(1)
    assert ((pos >= 0) == same.any(1)).all() and ((neg >= 0) == other.any(1)).all()
    assert (far[valid] - d[rows, pos][valid] <= slack[valid]).all(), "not the farthest positive"
    assert (d[rows, neg][valid] - near[valid] <= slack[valid]).all(), "not the nearest negative"
    out = ck.triplet_margin_loss(x, labels, margin, normalize=normalize, reduction=reduction,
                                 backend=backend)
    ref = ck.triplet_margin_loss(x.detach().double(), labels, margin, normalize=normalize,
                                 reduction=reduction, backend="torch")
    # A tie broken the other way changes the loss by rounding of distances only: measured
    # against the margin, the loss's natural scale (the loss itself may be 0).
    close(out, ref, x.dtype, "loss", DEVICE, floor=float(margin))
    ref_pos = torch.where(same, d, -1.0).argmax(1)
    ref_neg = torch.where(other, d, float("inf")).argmin(1)
    return bool((pos[valid] == ref_pos[valid]).all() and (neg[valid] == ref_neg[valid]).all())
