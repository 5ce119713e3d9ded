import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["clip_loss"])
def test_clip(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
