"""Shared benchmark machinery (pytest-benchmark).

Providers are the reference (``torch``) and every kernel backend that runs *compiled* on
this device (the Triton interpreter is a correctness tool, never timed). Each benchmark
synchronizes CUDA inside the timed call and records peak memory in ``extra_info``:
``torch.cuda.max_memory_allocated`` on CUDA, peak resident set size on CPU.

    python -m pytest benchmarks -q --benchmark-json=benchmarks/.results/run.json
"""
import os
import resource

import torch

from contrastive_kernels import backend_info
from contrastive_kernels.problems import make_problem

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def providers() -> list[str]:
    """The eager reference, the torch.compile'd reference ("torch-compiled"), and every
    kernel backend that runs compiled here."""
    info = backend_info()
    kernels = [b for b in ("triton", "cuda", "cpu") if info[b]["available"]
               and not (b == "triton" and (INTERPRETED or DEVICE.type != "cuda"))]
    return ["torch", "torch-compiled"] + kernels


def sizes() -> list[tuple[int, int, torch.dtype]]:
    if DEVICE.type == "cuda":
        return [(4096, 256, torch.bfloat16), (16384, 256, torch.bfloat16),
                (16384, 128, torch.float32)]
    return [(1024, 64, torch.float32), (4096, 256, torch.float32)]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1])


def _reset_peak() -> int:
    """Start a peak-memory window; returns the baseline (bytes)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
        return torch.cuda.memory_allocated(DEVICE)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
        return _status_kib("VmRSS") * 1024
    except OSError:
        return 0


def _peak_bytes(baseline: int) -> int:
    """Peak memory above the baseline since _reset_peak: CUDA allocator peak, or peak
    resident set size on CPU (process-lifetime ru_maxrss where /proc is unavailable)."""
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated(DEVICE) - baseline
    try:
        return _status_kib("VmHWM") * 1024 - baseline
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_benchmark(benchmark, loss: str, provider: str, n: int, d: int, dtype,
                  mode: str, rounds: int = 5) -> None:
    """Time forward (mode "fwd") or forward+backward ("fwd_bwd") of one problem; record
    the peak memory above what the inputs hold (extra_info["peak_bytes"])."""
    baseline = _reset_peak()
    run, leaves = make_problem(loss, n, d, dtype, DEVICE)

    call = run
    if provider == "torch-compiled":
        # The reference as torch.compile sees it (fusion, but still the N×M logits); the
        # warm-up call below compiles it, the timed calls reuse the graph.
        compiled = torch.compile(lambda: run("torch"))
        call = lambda _: compiled()  # noqa: E731

    def step():
        out = call(provider)
        if mode == "fwd_bwd":
            torch.autograd.grad(out, leaves)
        _sync()

    baseline = _reset_peak()  # inputs exist now: count only what the loss adds
    step()  # warm-up: Triton compilation, allocator
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(loss=loss, provider=provider, n=n, d=d,
                                dtype=str(dtype)[6:], mode=mode, device=str(DEVICE),
                                peak_bytes=_peak_bytes(baseline))


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", providers())
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", sizes(), ids=lambda s: f"N{s[0]}-D{s[1]}-{str(s[2])[6:]}")
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", ["fwd", "fwd_bwd"])
