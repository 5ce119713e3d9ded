from conftest import run_benchmark

LOSSES = ["simcse_unsup_loss", "simcse_sup_loss"]  # conftest pairs each with its providers


def test_simcse(benchmark, loss, provider, size, mode):
    n, d, dtype = size
    run_benchmark(benchmark, loss, provider, n, d, dtype, mode)
