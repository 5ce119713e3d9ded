"""Forward+backward time and TFLOP/s of every kernel backend against the eager and the
``torch.compile``d reference, CLIP loss, interleaved rounds.

On a GPU (the numbers issue 3 asks for):
    python benchmarks/engine_compare.py --n 16384 65536 --d 256 1024 --dtype bfloat16
On CPU (a smoke run of the same code): python benchmarks/engine_compare.py --n 1024 --d 64

TFLOP/s counts the tiled engine's matmul work, 8·N²·D for forward+backward (one product
forward, three backward), for every provider, so the column compares times on one scale.
A provider that runs out of memory is reported as OOM. The fastest kernel backend per
shape is what ``dispatch.CUDA_PREFERENCE`` should list first.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import contrastive_kernels as ck
from contrastive_kernels import backend_info, reference


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def providers(device: torch.device, compiled: bool) -> dict:
    info = backend_info()
    kernels = [b for b in ("triton", "cuda", "cpu") if info[b]["available"]
               and not (b == "triton" and device.type != "cuda")]
    out = {b: (lambda b=b: lambda x, y: ck.clip_loss(x, y, 10.0, normalize=True, backend=b))()
           for b in kernels}
    out["torch eager"] = lambda x, y: reference.clip_loss(x, y, 10.0, "mean", True)
    if compiled:
        fn = torch.compile(lambda x, y: reference.clip_loss(x, y, 10.0, "mean", True))
        out["torch.compile"] = fn
    return out


def time_step(fn, x, y, device) -> float:
    a, b = x.detach().requires_grad_(), y.detach().requires_grad_()
    _sync(device)
    t0 = time.perf_counter()
    fn(a, b).backward()
    _sync(device)
    return time.perf_counter() - t0


def measure(n, d, dtype, device, rounds, compiled) -> dict[str, float | str]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device, dtype)
    y = torch.randn(n, d, generator=gen).to(device, dtype)
    times: dict[str, list[float] | str] = {}
    fns = providers(device, compiled)  # once: the warm-up compiles what the rounds time
    for name, fn in fns.items():
        try:
            time_step(fn, x, y, device)  # warm-up / compile
            times[name] = []
        except torch.OutOfMemoryError:
            times[name] = "OOM"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    live = {k: fn for k, fn in fns.items() if isinstance(times[k], list)}
    for _ in range(rounds):
        for name, fn in live.items():
            try:
                times[name].append(time_step(fn, x, y, device))
            except torch.OutOfMemoryError:
                times[name] = "OOM"
                live = {k: v for k, v in live.items() if k != name}
                break
    return {k: (statistics.median(v) if isinstance(v, list) and v else "OOM")
            for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1024])
    ap.add_argument("--d", type=int, nargs="+", default=[64])
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"clip_loss forward+backward on {name}, {str(dtype)[6:]}, median of "
          f"{args.rounds} interleaved rounds; TFLOP/s = 8·N²·D / time\n")
    print("| N | D | provider | ms | TFLOP/s | vs eager |\n|---|---|---|---|---|---|")
    for n in args.n:
        for d in args.d:
            res = measure(n, d, dtype, device, args.rounds, not args.no_compile)
            eager = res.get("torch eager")
            for prov, t in res.items():
                if t == "OOM":
                    print(f"| {n} | {d} | {prov} | OOM | - | - |")
                    continue
                speed = f"{eager / t:.2f}x" if isinstance(eager, float) else "-"
                print(f"| {n} | {d} | {prov} | {t * 1e3:.1f} | {8 * n * n * d / t / 1e12:.2f} "
                      f"| {speed} |")


if __name__ == "__main__":
    main()
