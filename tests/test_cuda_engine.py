"""CUDA C++ engine checks that need a GPU (the per-loss suite also runs on "cuda" when it
is available). Without a GPU every test here skips with the reason."""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import dispatch
from contrastive_kernels.testing import assert_close

pytestmark = pytest.mark.skipif(not dispatch.backend_info()["cuda"]["available"],
                                reason="needs a CUDA device and the built CUDA extension")


def _pair(n, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(n, d, generator=gen, dtype=torch.float64)  # noqa: E731
    return make().cuda(), make().cuda()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_survive_a_large_batch_mean(dtype, backend):
    """dS of a mean over N = 4096 rows is ~1/N²: the tile's power-of-two scaling keeps it
    out of fp16's underflow (both GPU engines), so the gradient matches fp64."""
    if not dispatch.backend_info()[backend]["available"]:
        pytest.skip(f"{backend} unavailable")
    x, y = _pair(4096, 64, dtype, 0)
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
    x, y = _pair(1000, 96, dtype, 1)
    outs = [ck.nt_xent_loss(x.to(dtype), y.to(dtype), backend=b) for b in ("cuda", "triton")]
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-5)


def test_runs_on_the_inputs_device_and_stream():
    x, y = _pair(257, 32, torch.float32, 2)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ck.clip_loss(x, y, 10.0, backend="cuda")
    stream.synchronize()
    ref = ck.clip_loss(x, y, 10.0, backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
