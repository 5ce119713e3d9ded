import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["n_pair_loss"])
def test_n_pair(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
