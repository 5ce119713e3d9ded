import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["triplet_margin_loss"])
def test_triplet(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
