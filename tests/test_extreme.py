"""Extreme but legal inputs, on every kernel backend, against the float64 reference:
temperature 0.01 with fp16 inputs, very large / very small / mixed row norms, duplicate
rows, N = 1, D = 1, N off every tile size, non-contiguous and transposed inputs, inputs
that need no gradient, and no-grad inference doing no backward work. The int64-indexing
cases (N·M > 2³¹) are closed-form checks on the CPU engine."""
import math

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.engines import library
from contrastive_kernels.testing import relative_error, tolerance
from harness import (DEVICE, KERNEL_BACKENDS, LossCase, check_triplet, compare, generator,
                     loss_fn)

TEMPERATURE_LOSSES = ("info_nce", "info_nce_bank", "nt_xent_loss", "clip_loss",
                      "siglip_loss", "simcse_unsup_loss", "simcse_sup_loss", "supcon_loss")
ALL_LOSSES = TEMPERATURE_LOSSES + ("n_pair_loss", "triplet_margin_loss", "contrastive_loss")


def _rows(n, d, dtype, gen, style):
    """(n, d) features of ``dtype``: standard normal rows reshaped by ``style``."""
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    # fp16: norms of 1e±2. At 1e3 a normalized loss's gradient (∝ 1/‖x‖) falls below
    # fp16's smallest normal (6e-5) and keeps only a few bits: a limit of the output
    # dtype (the fp64 reference rounded to fp16 loses the same), not of the kernels.
    big = 1e2 if dtype == torch.float16 else 1e8
    if style == "large":
        x = x * big
    elif style == "small":
        x = x / big
    elif style == "mixed":  # norms spread over the whole range, row by row
        exponent = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1
        x = x * big ** exponent
    elif style == "duplicates":  # every row appears twice (rows 2k and 2k+1)
        x = x[torch.arange(n) // 2]
    return x.to(DEVICE, dtype)


def _case(loss, style="plain", temperature=0.5):
    """A LossCase for ``loss`` whose features follow ``style``."""
    def make(n, d, dtype, gen):
        f = lambda rows: _rows(rows, d, dtype, gen, style)  # noqa: E731
        labels = torch.arange(n, device=DEVICE) % max(1, n // 3)
        t = temperature
        return {
            "info_nce": lambda: ([f(n), f(n)], {"temperature": t}),
            "info_nce_bank": lambda: ([f(n), f(n), f(2 * n + 1)], {"temperature": t}),
            "nt_xent_loss": lambda: ([f(n), f(n)], {"temperature": t}),
            "clip_loss": lambda: ([f(n), f(n), 1 / t], {"normalize": True}),
            "siglip_loss": lambda: ([f(n), f(n), 1 / t, -2.0], {"normalize": True}),
            "simcse_unsup_loss": lambda: ([f(2 * n)], {"lamda": t}),
            "simcse_sup_loss": lambda: ([f(3 * n)], {"lamda": t}),
            "supcon_loss": lambda: ([f(n), labels], {"temperature": t}),
            "n_pair_loss": lambda: ([f(n), f(n)], {}),
            "triplet_margin_loss": lambda: ([f(n), labels], {"margin": 0.2}),
            "contrastive_loss": lambda: ([f(max(n, 2)), torch.arange(max(n, 2), device=DEVICE)
                                          % 3], {"margin": 1.0}),
        }[loss]()

    return LossCase(loss_fn(loss), make, normalizes=loss in TEMPERATURE_LOSSES)


def _gen(*key):
    return generator("extreme", *key)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
def test_temperature_001_with_fp16_inputs(loss, backend):
    """Logits up to ±100 (e^100 overflows fp16 and fp32): the online log-sum-exp keeps
    every value finite and within the fp16 tolerance of the fp64 reference."""
    compare(_case(loss, temperature=0.01), backend, 33, 7, torch.float16, "none",
            _gen(loss, backend, "t001"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("style", ["large", "small", "mixed"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_extreme_row_norms(loss, backend, style, dtype):
    """Row norms of 1e±8 (fp32) or 1e±2 (fp16), alone or mixed row by row."""
    gen = _gen(loss, backend, style, dtype)
    if loss == "triplet_margin_loss" and style == "mixed":
        _check_mining_with_mixed_norms(backend, dtype, gen)
        return
    compare(_case(loss, style), backend, 19, 5, dtype, "mean", gen)


def _check_mining_with_mixed_norms(backend, dtype, gen):
    """With norms from 1e-8 to 1e8 in one batch, the candidates a large row is mined
    against often lie closer together than fp32 can tell apart, so "the" hardest row is a
    tie at the inputs' precision (see harness.check_triplet)."""
    (x, labels), kw = _case("triplet_margin_loss", "mixed").make(19, 5, dtype, gen)
    check_triplet(x, labels, backend, kw["margin"], normalize=False)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_duplicate_rows(loss, backend):
    compare(_case(loss, "duplicates"), backend, 18, 6, torch.float32, "none",
            _gen(loss, backend, "dup"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_one_row_and_one_feature(loss, backend):
    """N = 1 (where the loss is defined: Hadsell needs a pair and gets 2 rows) and D = 1."""
    compare(_case(loss), backend, 1, 5, torch.float32, "none", _gen(loss, backend, "n1"))
    compare(_case(loss), backend, 33, 1, torch.float32, "none", _gen(loss, backend, "d1"))


def test_hadsell_needs_two_rows():
    with pytest.raises(ValueError, match="embeddings"):
        ck.contrastive_loss(torch.randn(1, 4), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_rows_off_every_tile_size(loss, backend):
    """257 = 256 + 1 (CPU tiles of 256) and prime to every Triton/CUDA tile (16–128)."""
    n = 257 if backend != "triton" or DEVICE.type == "cuda" else 67
    compare(_case(loss), backend, n, 3, torch.float32, "none", _gen(loss, backend, "ragged"))


def _call(loss, args, kwargs, backend):
    return loss_fn(loss)(*args, backend=backend, **kwargs)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_non_contiguous_inputs(loss, backend, layout):
    """Features given as a transposed (D, N) buffer or as every other column of a wider one:
    the same loss as their contiguous copies, and gradients reach the original buffers."""
    args, kwargs = _case(loss).make(11, 6, torch.float32, _gen(loss, backend, layout))
    views, buffers = [], []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() == 2:
            if layout == "transposed":
                buf = a.t().contiguous().requires_grad_()
                view = buf.t()
            else:
                buf = torch.stack([a, torch.full_like(a, float("nan"))], -1).flatten(1)
                buf.requires_grad_()
                view = buf[:, ::2]
            assert not view.is_contiguous()
            views.append(view)
            buffers.append(buf)
        else:
            views.append(a)
    out = _call(loss, views, kwargs, backend)
    dense = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor)
             and a.is_floating_point() and a.dim() == 2 else a for a in args]
    ref = _call(loss, dense, kwargs, "torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out, buffers)
    ref_grads = torch.autograd.grad(ref, [a for a in dense if isinstance(a, torch.Tensor)
                                          and a.requires_grad])
    for g, rg in zip(grads, ref_grads):
        view = g.t() if layout == "transposed" else g[:, ::2]
        torch.testing.assert_close(view, rg, rtol=1e-4, atol=1e-6)
        if layout == "strided":
            assert not g[:, 1::2].any(), "gradient leaked into the unused columns"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_inputs_without_grad(loss, backend):
    """No input requires grad: the value is the reference's and no graph is built."""
    args, kwargs = _case(loss).make(13, 4, torch.float32, _gen(loss, backend, "nograd"))
    out = _call(loss, args, kwargs, backend)
    assert not out.requires_grad
    torch.testing.assert_close(out, _call(loss, args, kwargs, "torch"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_no_grad_inference_does_no_backward_work(loss, backend, monkeypatch):
    """Under torch.no_grad() (and with inputs that need no gradient) not one backward
    kernel runs: the engine's backward entry points are booby-trapped."""
    impl = library.engine(backend)

    def trap(*args, **kwargs):
        raise AssertionError("a backward kernel ran during inference")

    for name in ("backward", "pair_backward", "add_rows"):
        if hasattr(impl, name):
            monkeypatch.setattr(impl, name, trap)
    args, kwargs = _case(loss).make(13, 4, torch.float32, _gen(loss, backend, "infer"))
    leaves = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
              else a for a in args]
    with torch.no_grad():
        out = _call(loss, leaves, kwargs, backend)
    assert torch.isfinite(out).all()
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in leaves]
    _call(loss, plain, kwargs, backend)


# ---------------------------------------------------------------------------------------
# N·M beyond 2³¹: the CPU engine against closed forms (D = 1, keys from 8 values).
# ---------------------------------------------------------------------------------------
VALUES = torch.tensor([-1.5, -1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 1.5], dtype=torch.float64)
needs_cpu = pytest.mark.skipif("cpu" not in KERNEL_BACKENDS, reason="needs the C++ CPU engine")


def _close(actual, expected, what):
    """The table's relative error (max error over the tensor's scale) within fp32's
    tolerance. A query here sums 4,300 column tiles of 256 keys, each adding the same sum
    (a periodic bank): a single fp32 running sum drifted to 6e-5 in lse and in dq; the
    engines' two-level sums keep both at about 2e-6."""
    err = relative_error(actual, expected)
    assert err <= tolerance(torch.float32), f"{what}: relative error {err:.2e}"


@needs_cpu
def test_bank_beyond_int32_pairs():
    """InfoNCE with a bank: N = 2048 queries × K = 1,100,001 keys = 2.25e9 logits > 2³¹.
    With D = 1 and the bank drawn from 8 values, every row's log-sum-exp and every key's
    gradient has an O(N·8) closed form, so each output element is checked exactly."""
    n, k, t = 2048, 1_100_001, 0.5
    gen = torch.Generator().manual_seed(31)
    q = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1
    p = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1
    cls = torch.arange(k) % len(VALUES)
    bank = VALUES[cls][:, None]
    counts = torch.bincount(cls, minlength=len(VALUES)).double()
    leaves = [x.float().requires_grad_() for x in (q, p, bank)]
    out = ck.info_nce(*leaves, temperature=t, normalize=False, backend="cpu")
    out.backward()

    s_pos = (q * p)[:, 0] / t                                   # (N,)
    s_val = q * VALUES[None, :] / t                             # (N, 8)
    lse = torch.logsumexp(torch.cat([s_pos[:, None], s_val + counts.log()], 1), 1)
    want = (lse - s_pos).mean()
    p_pos = torch.exp(s_pos - lse)
    p_val = torch.exp(s_val - lse[:, None])                     # per key of that value
    dq = ((p_pos - 1) * p[:, 0] + (p_val * counts * VALUES).sum(1)) / t / n
    dp = (p_pos - 1) * q[:, 0] / t / n
    d_bank_by_value = (p_val * q).sum(0) / t / n                # (8,)
    _close(out, want, "loss")
    _close(leaves[0].grad[:, 0], dq, "query grad")
    _close(leaves[1].grad[:, 0], dp, "positive grad")
    _close(leaves[2].grad[:, 0], d_bank_by_value[cls], "bank grad")


@needs_cpu
def test_siglip_beyond_int32_pairs():
    """SigLIP over N = M = 46,400 rows (2.15e9 pairs > 2³¹), D = 1, text values from 8:
    the loss, every image and text gradient, and both scalars' gradients in closed form."""
    n, scale, bias = 46_400, 2.0, -1.0
    gen = torch.Generator().manual_seed(46)
    x = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    cls = torch.arange(n) % len(VALUES)
    y = VALUES[cls]
    counts = torch.bincount(cls, minlength=len(VALUES)).double()
    img = x[:, None].float().requires_grad_()
    txt = y[:, None].float().requires_grad_()
    s_t = torch.tensor(scale, requires_grad=True)
    b_t = torch.tensor(bias, requires_grad=True)
    out = ck.siglip_loss(img, txt, s_t, b_t, backend="cpu")
    out.backward()

    sp, sig = torch.nn.functional.softplus, torch.sigmoid
    u_val = scale * x[:, None] * VALUES[None, :] + bias          # (N, 8): every j as negative
    u_diag = scale * x * y + bias
    # Each row: all pairs as negatives (softplus(u)), the diagonal swapped to positive.
    rows = (sp(u_val) * counts).sum(1) - sp(u_diag) + sp(-u_diag)
    want = rows.sum() / n
    g_val = sig(u_val) * counts                                  # d/du of the negatives
    g_diag = -sig(u_diag) - sig(-u_diag)                         # swap the diagonal
    dx = scale * ((g_val * VALUES).sum(1) + g_diag * y) / n
    dy = scale * ((sig(u_val) * x[:, None]).sum(0)[cls] + g_diag * x) / n
    dscale = ((g_val * x[:, None] * VALUES).sum() + (g_diag * x * y).sum()) / n
    dbias = (g_val.sum() + g_diag.sum()) / n
    _close(out, want, "loss")
    _close(img.grad[:, 0], dx, "image grad")
    _close(txt.grad[:, 0], dy, "text grad")
    _close(s_t.grad, dscale, "scale grad")
    _close(b_t.grad, dbias, "bias grad")
    assert n * n > 2 ** 31 and math.isfinite(out.item())
