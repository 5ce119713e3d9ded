import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["contrastive_loss"])
def test_contrastive(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
