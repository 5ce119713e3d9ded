from conftest import run_benchmark

LOSSES = ["siglip_loss"]  # conftest pairs each with its providers


def test_siglip(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
