"""Per-call overhead at tiny sizes, where the kernels' own work is small: the median
microseconds of forward+backward through the public API on the CPU engine.

    python benchmarks/dispatch_overhead.py [--n 64] [--d 32]

Measured 2026-12-01 (2-core VM), N = 64, D = 32: CLIP 234 µs, SigLIP 170 µs, triplet
246 µs with the custom operators; 138 / 100 / 186 µs with the plain autograd.Function
path they replaced (commit 7d856c2): about 70 µs of operator dispatch per step.
"""
import argparse
import statistics
import time

import torch

from contrastive_kernels.problems import make_problem


def per_call_us(loss: str, n: int, d: int, calls: int = 200, rounds: int = 5) -> float:
    run, leaves = make_problem(loss, n, d, torch.float32, "cpu")
    for _ in range(20):
        torch.autograd.grad(run("cpu"), leaves)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            torch.autograd.grad(run("cpu"), leaves)
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=32)
    args = ap.parse_args()
    for loss in ("clip_loss", "siglip_loss", "triplet_margin_loss"):
        print(f"{loss:22s} {per_call_us(loss, args.n, args.d):7.0f} µs / forward+backward")


if __name__ == "__main__":
    main()
