"""torch.autocast (CPU bf16; CUDA fp16/bf16 where a GPU exists): losses take
autocast-produced features, compute as outside autocast (fp32 accumulation, never the
reference in half precision), and return each gradient in its input's dtype."""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.problems import ENGINE_LOSSES, make_problem
from contrastive_kernels.testing import assert_close
from harness import DEVICE, KERNEL_BACKENDS

AUTOCAST = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16), ("cuda", torch.bfloat16)]
                                        if DEVICE.type == "cuda" else [])
BACKENDS = KERNEL_BACKENDS + ["torch"]


@pytest.mark.parametrize("device_type,half", AUTOCAST)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", sorted(ENGINE_LOSSES))
def test_loss_under_autocast_equals_loss_outside(loss, backend, device_type, half):
    """fp32 features inside an autocast region: bit-identical to the same call outside
    (autocast would otherwise run the reference's matmuls in half precision)."""
    if device_type != DEVICE.type:
        pytest.skip("autocast device differs from the test device")
    n, d = (9, 5) if backend == "triton" and DEVICE.type == "cpu" else (37, 12)
    run, leaves = make_problem(loss, n, d, torch.float32, DEVICE, seed=11)
    plain = run(backend)
    plain_grads = torch.autograd.grad(plain, leaves)
    with torch.autocast(device_type, dtype=half):
        out = run(backend)
    grads = torch.autograd.grad(out, leaves)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    for g, p in zip(grads, plain_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, p, rtol=0, atol=0)


@pytest.mark.parametrize("device_type,half", AUTOCAST)
@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_under_autocast_feeds_the_loss(backend, device_type, half):
    """A Linear encoder under autocast emits half-precision features; CLIP, SigLIP and
    SupCon on them: float32 losses within the half tolerance of the fp64 reference, and
    the parameters' gradients (fp32) match the reference's run through the same graph."""
    if device_type != DEVICE.type:
        pytest.skip("autocast device differs from the test device")
    torch.manual_seed(0)
    enc = torch.nn.Linear(10, 8).to(DEVICE)
    x, y = torch.randn(2, 21, 10, device=DEVICE).unbind(0)
    labels = torch.arange(21, device=DEVICE) % 5
    losses = {
        "clip": lambda a, b, be: ck.clip_loss(a, b, 5.0, normalize=True, backend=be),
        "siglip": lambda a, b, be: ck.siglip_loss(a, b, 5.0, -2.0, normalize=True, backend=be),
        "supcon": lambda a, b, be: ck.supcon_loss(torch.stack([a, b], 1), labels, backend=be),
    }
    for name, fn in losses.items():
        results = []
        for be in (backend, "torch"):
            enc.zero_grad()
            with torch.autocast(device_type, dtype=half):
                a, b = enc(x), enc(y)
                assert a.dtype == half
                out = fn(a, b, be)
            assert out.dtype == torch.float32, name
            out.backward()
            results.append((out.detach(), enc.weight.grad.clone()))
        (out, w_grad), (ref, ref_w_grad) = results
        assert_close(out, ref, half, f"{name} loss", DEVICE)
        assert w_grad.dtype == torch.float32
        assert_close(w_grad, ref_w_grad, half, f"{name} weight grad", DEVICE)


@pytest.mark.parametrize("device_type,half", AUTOCAST)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_are_promoted_under_autocast(backend, device_type, half):
    """One tower under autocast (half), the other not (fp32): accepted inside autocast,
    computed in fp32, each gradient in its own input's dtype. Outside autocast the same
    mismatch is an error naming the argument."""
    if device_type != DEVICE.type:
        pytest.skip("autocast device differs from the test device")
    gen = torch.Generator().manual_seed(5)
    img32 = torch.randn(13, 6, generator=gen).to(DEVICE)
    txt = torch.randn(13, 6, generator=gen).to(DEVICE).requires_grad_()
    img = img32.to(half).requires_grad_()
    with torch.autocast(device_type, dtype=half):
        out = ck.clip_loss(img, txt, 4.0, normalize=True, backend=backend)
    g_img, g_txt = torch.autograd.grad(out, [img, txt])
    assert (g_img.dtype, g_txt.dtype) == (half, torch.float32)
    ref_img = img.detach().double().requires_grad_()
    ref_txt = txt.detach().double().requires_grad_()
    ref = ck.clip_loss(ref_img, ref_txt, 4.0, normalize=True, backend="torch")
    r_img, r_txt = torch.autograd.grad(ref, [ref_img, ref_txt])
    assert_close(out, ref, torch.float32, "loss", DEVICE)
    assert_close(g_img, r_img, half, "image grad", DEVICE)
    assert_close(g_txt, r_txt, torch.float32, "text grad", DEVICE)
    with pytest.raises(TypeError, match="text_features"):
        ck.clip_loss(img, txt, 4.0, backend=backend)
