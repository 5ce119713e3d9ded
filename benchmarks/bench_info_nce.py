from conftest import run_benchmark

LOSSES = ["info_nce", "info_nce_bank"]  # conftest pairs each with its providers


def test_info_nce(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
