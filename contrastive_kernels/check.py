"""The main job: every available kernel backend against the float64 reference on this
device, side by side with the reference's time and memory."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .dispatch import backend_info
from .problems import ENGINE_LOSSES, make_problem
from .testing import LargestTensor, relative_error, tolerance


@dataclass
class Row:
    loss: str
    backend: str
    error: float
    tolerance: float
    seconds: float
    peak_bytes: int | None
    largest_tensor: int

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(loss, backend, n, d, dtype, device, repeats):
    """(loss, grads, seconds per fwd+bwd, peak CUDA bytes or None, largest tensor)."""
    run, leaves = make_problem(loss, n, d, dtype, device)
    out = run(backend)  # warm-up (and Triton compile)
    grads = torch.autograd.grad(out, leaves)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = run(backend)
        grads = torch.autograd.grad(out, leaves)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    with LargestTensor(floating_only=True) as mode:
        torch.autograd.grad(run(backend), leaves)
    return out, grads, seconds, peak, mode.largest


def compare(n: int, d: int, dtype: torch.dtype, device: torch.device,
            kernels: list[str] | None = None, repeats: int = 3) -> list[Row]:
    """One row per (loss, provider): the reference first, then each kernel backend
    (default: every available one)."""
    if kernels is None:
        kernels = [b for b in ("triton", "cuda", "cpu") if backend_info()[b]["available"]]
    rows = []
    for loss in ENGINE_LOSSES:
        exact, exact_grads, *_ = _run(loss, "torch", n, d, torch.float64, device, 1)
        for backend in ["torch"] + kernels:
            out, grads, secs, peak, largest = _run(loss, backend, n, d, dtype, device, repeats)
            err = max([relative_error(out, exact)] +
                      [relative_error(g, e) for g, e in zip(grads, exact_grads)])
            rows.append(Row(loss, backend, err, tolerance(dtype, device), secs, peak, largest))
    return rows


def format_rows(rows: list[Row], n: int) -> str:
    ref = {r.loss: r for r in rows if r.backend == "torch"}
    lines = [f"{'loss':<19} {'backend':<7} {'max rel err':>11} {'tol':>7} {'result':<6} "
             f"{'ms fwd+bwd':>10} {'vs torch':>8} {'peak MiB':>9} {'largest tensor':>15}"]
    for r in rows:
        speed = ref[r.loss].seconds / r.seconds if r.seconds else float("nan")
        peak = f"{r.peak_bytes / 2**20:9.1f}" if r.peak_bytes is not None else f"{'-':>9}"
        lines.append(f"{r.loss:<19} {r.backend:<7} {r.error:11.2e} {r.tolerance:7.0e} "
                     f"{'PASS' if r.ok else 'FAIL':<6} {r.seconds * 1e3:10.1f} "
                     f"{speed:7.2f}x {peak} {r.largest_tensor:>9} ({r.largest_tensor / n / n:.2f} N²)")
    return "\n".join(lines)
