import pytest

from conftest import run_benchmark


@pytest.mark.parametrize("loss", ["info_nce", "info_nce_bank"])
def test_info_nce(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
