"""`python -m contrastive_kernels bench`: the quick side-by-side of every loss on this
device — forward+backward time and memory of the reference and of each kernel backend that
runs compiled here, at a size fitted to the device. (The full suite, with sizes, modes and
peers, is benchmarks/; this is the one-minute look.)"""
from __future__ import annotations

import sys
import time

import torch

from .dispatch import backend_info
from .problems import ENGINE_LOSSES, make_problem
from .testing import LargestTensor


def _sizes(device: torch.device) -> tuple[int, int, torch.dtype]:
    if device.type == "cuda":
        return 16384, 256, torch.bfloat16
    return 4096, 128, torch.float32


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def _measure(loss, backend, n, d, dtype, device, repeats):
    """(median seconds of forward+backward, largest tensor any op produced)."""
    run, leaves = make_problem(loss, n, d, dtype, device)
    torch.autograd.grad(run(backend), leaves)  # warm-up (Triton compiles here)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.autograd.grad(run(backend), leaves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    with LargestTensor(floating_only=True) as mode:
        torch.autograd.grad(run(backend), leaves)
    return sorted(times)[len(times) // 2], mode.largest * dtype.itemsize


def run_bench(device, n=None, d=None, dtype=None, repeats=3) -> int:
    dn, dd, dt = _sizes(device)
    n, d = n or dn, d or dd
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or dt)
    info = backend_info()
    kernels = [b for b in ("triton", "cuda", "cpu") if info[b]["available"]
               and not (b == "triton" and device.type != "cuda")]
    providers = ["torch"] + kernels
    jobs = [(loss, p) for loss in ENGINE_LOSSES for p in providers]
    results = {}
    for i, (loss, p) in enumerate(jobs):
        _progress(i, len(jobs), f"{loss} / {p}")
        results[loss, p] = _measure(loss, p, n, d, dtype, device, repeats)
    _progress(len(jobs), len(jobs), "done")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"contrastive_kernels bench on {name}: N={n} D={d} {str(dtype)[6:]}, forward+"
          f"backward, median of {repeats}; 'largest' = the largest tensor any operator made")
    head = f"{'loss':<20}" + "".join(f"{p + ' ms':>12}{'largest':>12}" for p in providers)
    print(head + "  speed-up")
    for loss in ENGINE_LOSSES:
        ref = results[loss, "torch"][0]
        cells = "".join(f"{results[loss, p][0] * 1e3:12.1f}{_mib(results[loss, p][1]):>12}"
                        for p in providers)
        best = min(results[loss, p][0] for p in kernels) if kernels else ref
        print(f"{loss:<20}{cells}  {ref / best:6.2f}x")
    return 0


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
