import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["nt_xent_loss"])
def test_nt_xent(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
