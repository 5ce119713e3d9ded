from conftest import run_benchmark

LOSSES = ["n_pair_loss"]  # conftest pairs each with its providers


def test_n_pair(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
