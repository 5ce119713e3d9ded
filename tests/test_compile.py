"""torch.compile: the kernels are custom operators (engines/library.py) with fake
implementations and registered autograd, so every loss traces with fullgraph=True (a graph
break raises) and gives the eager values and gradients."""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.engines import library
from contrastive_kernels.problems import ENGINE_LOSSES, make_problem
from harness import DEVICE, KERNEL_BACKENDS

# The interpreter is slow: Triton gets the small problem only.
SIZES = {"cpu": (37, 9), "cuda": (37, 9), "triton": (9, 5)}


def _compiled_vs_eager(loss, backend, dtype, compile_backend):
    n, d = SIZES[backend]
    run, leaves = make_problem(loss, n, d, dtype, DEVICE, seed=n)
    eager = run(backend)
    eager_grads = torch.autograd.grad(eager, leaves)
    torch._dynamo.reset()
    compiled = torch.compile(lambda: run(backend), backend=compile_backend, fullgraph=True)
    out = compiled()
    grads = torch.autograd.grad(out, leaves)
    return (eager, eager_grads), (out, grads)


def _assert_same(eager, compiled, exact):
    (e, e_grads), (c, c_grads) = eager, compiled
    check = torch.testing.assert_close if not exact else \
        (lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0))
    check(c, e)
    for a, b in zip(c_grads, e_grads):
        assert a.dtype == b.dtype
        check(a, b)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ENGINE_LOSSES)
def test_every_loss_traces_in_one_graph(loss, backend):
    """aot_eager runs the traced forward and backward graphs as they are: the kernels are
    the same calls, so the result is bitwise the eager one."""
    eager, compiled = _compiled_vs_eager(loss, backend, torch.float32, "aot_eager")
    _assert_same(eager, compiled, exact=True)


@pytest.mark.parametrize("loss", ["clip_loss", "siglip_loss", "triplet_margin_loss"])
def test_inductor_compiles_encoder_plus_loss(loss):
    """A model and the loss under the default compiler (inductor), fullgraph: same loss and
    parameter gradients as eager (inductor may reorder the encoder's float arithmetic)."""
    backend = "cuda" if "cuda" in KERNEL_BACKENDS else "cpu"
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(),
                                  torch.nn.Linear(16, 8)).to(DEVICE)
    x, y = torch.randn(2, 33, 12, device=DEVICE).unbind(0)
    labels = torch.randint(0, 6, (33,), device=DEVICE)
    scale = torch.tensor(2.0, device=DEVICE, requires_grad=True)

    def step():
        a, b = encoder(x), encoder(y)
        if loss == "clip_loss":
            return ck.clip_loss(a, b, scale.exp(), normalize=True, backend=backend)
        if loss == "siglip_loss":
            return ck.siglip_loss(a, b, scale.exp(), -scale, normalize=True, backend=backend)
        return ck.triplet_margin_loss(a, labels, margin=0.5, backend=backend)

    params = list(encoder.parameters()) + [scale]
    eager = step()
    e_grads = torch.autograd.grad(eager, params, allow_unused=True)
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True)()
    c_grads = torch.autograd.grad(out, params, allow_unused=True)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(c_grads, e_grads):
        if b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _sample(backend, n=6, m=5, d=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(n * m)
    q = torch.randn(n, d, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    k = torch.randn(m, d, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    keys = torch.arange(n, device=DEVICE) % 3
    ckeys = torch.arange(m, device=DEVICE) % 3
    params = torch.tensor([2.0, -1.0, 1.5], dtype=dtype, device=DEVICE, requires_grad=True)
    scale = torch.tensor(3.0, dtype=dtype, device=DEVICE, requires_grad=True)
    return q, k, keys, ckeys, params, scale


@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b != "triton"]
                         + (["triton"] if "triton" in KERNEL_BACKENDS else []))
def test_opcheck_every_operator(backend):
    """torch.library.opcheck: schema, fake (meta) implementation against the real one,
    autograd registration, and AOT dispatch, for each operator."""
    q, k, keys, ckeys, params, scale = _sample(backend)
    extra = torch.randn(q.shape[0], dtype=q.dtype, device=DEVICE, requires_grad=True)
    ops = torch.ops.contrastive_kernels
    cases = [
        (ops.softmax_forward, (q, k, scale, None, keys, ckeys, False, True, True, False,
                               False, backend)),
        (ops.softmax_forward, (q, q, scale, extra, keys, keys, True, False, False, True,
                               False, backend)),
        (ops.softmax_forward, (q, k, scale, extra, keys, ckeys, False, False, True, False,
                               False, backend, [1.5, 0.5])),
        (ops.pair_forward, (q, k, params, keys, ckeys, 0, False, True, False, False,
                            backend)),
        (ops.pair_forward, (q, q, params, keys, keys, 1, True, False, True, False, backend)),
        (ops.pair_loss_and_grad, (q, k, params, keys, ckeys, 0, False, True, False, False,
                                  0.5, backend)),
        (ops.hardest_pairs, (q.detach(), keys, False, backend)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_operators_are_registered_once_with_fake_kernels():
    names = {"softmax_forward", "softmax_backward", "pair_forward", "pair_backward",
             "pair_loss_and_grad", "hardest_pairs", "subtract_rows"}
    for name in names:
        op = getattr(torch.ops.contrastive_kernels, name).default
        assert op.namespace == "contrastive_kernels"
        assert getattr(library, name)._init_fn is not None


MODULE_CALLS = {
    "ClipLoss": lambda m, a, b, y: m(a, b, torch.tensor(5.0)),
    "SigLipLoss": lambda m, a, b, y: m(a, b, torch.tensor(5.0), torch.tensor(-2.0)),
    "InfoNCELoss": lambda m, a, b, y: m(a, b),
    "NTXentLoss": lambda m, a, b, y: m(a, b),
    "SimCSEUnsupLoss": lambda m, a, b, y: m(torch.cat([a, b])),
    "SimCSESupLoss": lambda m, a, b, y: m(torch.cat([a, b, a.flip(0)])),
    "SupConLoss": lambda m, a, b, y: m(torch.stack([a, b], 1), y),
    "NPairLoss": lambda m, a, b, y: m(a, b),
    "TripletMarginLoss": lambda m, a, b, y: m(a, y),
    "ContrastiveLoss": lambda m, a, b, y: m(a, y),
}


@pytest.mark.parametrize("name", sorted(MODULE_CALLS))
def test_every_module_traces_in_one_graph(name):
    """The nn.Module forms (open_clip-style constructors included) compile fullgraph."""
    backend = "cuda" if "cuda" in KERNEL_BACKENDS else "cpu"
    if backend not in KERNEL_BACKENDS:
        pytest.skip("needs a compiled kernel backend")
    module = getattr(ck, name)(backend=backend)
    gen = torch.Generator().manual_seed(len(name))
    a, b = torch.randn(2, 12, 6, generator=gen).to(DEVICE).unbind(0)
    a.requires_grad_()
    y = torch.arange(12, device=DEVICE) % 4
    call = MODULE_CALLS[name]
    eager = call(module, a, b, y)
    torch._dynamo.reset()
    out = torch.compile(lambda: call(module, a, b, y), backend="aot_eager", fullgraph=True)()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(out, a)[0],
                               torch.autograd.grad(eager, a)[0], rtol=0, atol=0)
