"""CPU engine vs the reference from N = 1k to 64k: time and peak resident memory, forward
and forward+backward (pytest-benchmark; each case records extra_info["peak_bytes"]).

    python -m pytest -c benchmarks/pytest.ini benchmarks/bench_cpu_scaling.py \\
        --benchmark-json=benchmarks/.results/cpu_scaling.json

The reference is skipped where its N×N fp32 logits alone would exceed 2 GiB (N > 16k for
these losses): it would need several such matrices. Sizes above 4k run one timed round.
"""
import pytest
import torch

from conftest import DEVICE, run_benchmark
from contrastive_kernels import backend_info

SIZES = [(1024, 256), (4096, 256), (16384, 64), (65536, 32)]
REFERENCE_MAX_BYTES = 2 << 30
LOSSES = ["clip_loss", "nt_xent_loss"]  # conftest pairs each with its providers
PEERS = False  # the peers materialize N×N too; the reference stands for them here

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu" or not backend_info()["cpu"]["available"],
                                reason="CPU engine scaling (needs the C++ CPU extension)")


@pytest.mark.parametrize("n,d", SIZES, ids=[f"N{n}-D{d}" for n, d in SIZES])
def test_cpu_scaling(benchmark, loss, provider, n, d, mode):
    """provider (torch, cpu) and mode (fwd, fwd_bwd) come from conftest."""
    if provider != "cpu" and n * n * 4 > REFERENCE_MAX_BYTES:
        pytest.skip(f"reference needs several {n}² fp32 matrices ({n * n * 4 / 2**30:.0f} GiB each)")
    run_benchmark(benchmark, loss, provider, n, d, torch.float32, mode,
                  rounds=3 if n <= 4096 else 1)
