from conftest import run_benchmark

LOSSES = ["nt_xent_loss"]  # conftest pairs each with its providers


def test_nt_xent(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
