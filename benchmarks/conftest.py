"""Shared benchmark machinery (pytest-benchmark).

Providers are the eager reference (``torch``), the ``torch.compile``d reference
(``torch-compiled``), every kernel backend that runs *compiled* on this device (the Triton
interpreter is a correctness tool, never timed), and the peer libraries that are installed
(``peers.py``: open_clip, pytorch-metric-learning, info-nce-pytorch, Inf-CL on CUDA). Each
bench module names its losses in ``LOSSES``; the (loss, provider) pairs come from here. Each benchmark
synchronizes CUDA inside the timed call and records peak memory in ``extra_info``:
``torch.cuda.max_memory_allocated`` on CUDA, peak resident set size on CPU.

    python -m pytest benchmarks -c benchmarks/pytest.ini --benchmark-json=benchmarks/.results/run.json
"""
import ctypes
import ctypes.util
import os
import resource

import torch

from contrastive_kernels import backend_info
from contrastive_kernels.problems import make_problem
from peers import SAME as PEER_LOSSES, peer_call, peer_providers

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
M_MMAP_THRESHOLD = -3
TIMING_THRESHOLD = 32 << 20   # glibc's steady state: its dynamic threshold's maximum
MEMORY_THRESHOLD = 64 << 10   # every block over 64 KiB mapped, and unmapped when freed


def _mmap_threshold(nbytes: int) -> None:
    """glibc: serve allocations above ``nbytes`` by mmap (returned to the system when
    freed). Timed calls run at glibc's steady state; the one memory-measuring call runs
    with a small threshold (and after _release_free_heap) so that resident memory rises
    and falls with what the loss allocates: otherwise freed heap blocks are reused unseen
    by the peak RSS."""
    if DEVICE.type == "cpu" and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_MMAP_THRESHOLD, nbytes)


def providers(loss: str, peers: bool = True) -> list[str]:
    """The eager reference, the torch.compile'd reference ("torch-compiled"), every kernel
    backend that runs compiled here, and (``peers``) the installed peers with an adapter
    for ``loss``."""
    info = backend_info()
    kernels = [b for b in ("triton", "cuda", "cpu") if info[b]["available"]
               and not (b == "triton" and (INTERPRETED or DEVICE.type != "cuda"))]
    return (["torch", "torch-compiled"] + kernels
            + (peer_providers(loss, DEVICE) if peers else []))


def sizes() -> list[tuple[int, int, torch.dtype]]:
    """(N, D, dtype) per device: one width and dtype, N doubling or more, so each plot's
    lines show how time and memory grow with N."""
    if DEVICE.type == "cuda":
        return [(n, 256, torch.bfloat16) for n in (4096, 16384, 32768)]
    return [(n, 128, torch.float32) for n in (1024, 2048, 4096)]


def _release_free_heap() -> None:
    """glibc: give freed heap pages back to the system, so that a block the loss reuses
    from the heap is counted again when it is touched (malloc_trim(0) releases free pages
    anywhere in the heap, not only at its top)."""
    if DEVICE.type == "cpu" and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


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
    run, leaves = make_problem(loss, n, d, dtype, DEVICE)

    call = run
    if provider in PEER_LOSSES:
        peer = peer_call(provider, loss, leaves, n, DEVICE)
        call = lambda _: peer()  # noqa: E731
    elif provider == "torch-compiled":
        # The reference as torch.compile sees it (fusion, but still the N×M logits); the
        # warm-up call below compiles it, the timed calls reuse the graph.
        compiled = torch.compile(lambda: run("torch"))
        call = lambda _: compiled()  # noqa: E731

    def step():
        out = call(provider)
        if mode == "fwd_bwd":
            torch.autograd.grad(out, leaves)
        _sync()

    case = dict(loss=loss, provider=provider, n=n, d=d, dtype=str(dtype)[6:], mode=mode,
                device=str(DEVICE))
    _mmap_threshold(TIMING_THRESHOLD)
    try:
        step()  # warm-up: torch.compile / Triton compilation, allocator
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        # A provider that cannot hold the problem is a result, not a crash: recorded with
        # its error (and no time) so the table says so.
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        benchmark.extra_info.update(case, error=_oom_message(exc))
        return
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    _mmap_threshold(MEMORY_THRESHOLD)
    _release_free_heap()
    baseline = _reset_peak()  # inputs exist now: count only what the loss adds
    step()
    peak = _peak_bytes(baseline)
    _mmap_threshold(TIMING_THRESHOLD)
    benchmark.extra_info.update(case, peak_bytes=peak)


def _oom_message(exc: BaseException) -> str:
    import re
    wanted = re.search(r"allocate (\d+) bytes", str(exc))
    return (f"out of memory (asked for {int(wanted.group(1)) / 2**30:.0f} GiB)" if wanted
            else "out of memory")


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        peers = getattr(metafunc.module, "PEERS", True)
        pairs = [(loss, p) for loss in metafunc.module.LOSSES for p in providers(loss, peers)]
        metafunc.parametrize("loss,provider", pairs, ids=[f"{l}-{p}" for l, p in pairs])
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", sizes(), ids=lambda s: f"N{s[0]}-D{s[1]}-{str(s[2])[6:]}")
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", ["fwd", "fwd_bwd"])
