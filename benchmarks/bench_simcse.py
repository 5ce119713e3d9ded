import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["simcse_unsup_loss", "simcse_sup_loss"])
def test_simcse(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
