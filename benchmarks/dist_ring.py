"""Ring vs gather on gloo (CPU): per-rank peak extra memory and time of a CLIP
forward+backward with N_local rows per rank, for several world sizes, side by side.

    python benchmarks/dist_ring.py [--n-local 8192 --d 64 --worlds 2 4] [--write]

Each configuration runs in fresh processes (torch.multiprocessing, file:// rendezvous,
glibc's mmap threshold fixed at 64 KiB so that freed blocks leave the resident set);
each rank runs the loss once to warm up, then measures three steps, resetting its peak
resident set size (VmHWM) before each; per rank the median step, reported as the largest
over ranks. ``--write`` replaces the DIST block of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _status(key):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1]) * 1024


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _rank(rank, world, init, out, n_local, d, mode, threads):
    import contrastive_kernels as ck
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    img = torch.randn(n_local, d, generator=gen).requires_grad_()
    txt = torch.randn(n_local, d, generator=gen).requires_grad_()

    def step():
        ck.clip_loss(img, txt, 10.0, normalize=True, group=dist.group.WORLD,
                     dist_mode=mode).backward()

    step()
    extras, times = [], []
    for _ in range(3):  # the allocator's reuse varies from step to step: take the median
        dist.barrier()
        base = _reset_peak()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        extras.append(_status("VmHWM") - base)
    dist.barrier()
    with open(os.path.join(out, f"{rank}.txt"), "w") as f:
        f.write(f"{sorted(extras)[1]} {sorted(times)[1]}")
    dist.destroy_process_group()


def run(world, n_local, d, mode, threads) -> tuple[int, float]:
    # A fixed mmap threshold: glibc otherwise raises it after the warm-up frees its large
    # blocks and keeps later ones on the heap, so peak RSS would show reuse, not live size.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(world, os.path.join(tmp, "init"), tmp, n_local, d,
                                        mode, threads), nprocs=world, start_method="spawn")
        vals = [open(os.path.join(tmp, f"{r}.txt")).read().split() for r in range(world)]
    return max(int(v[0]) for v in vals), max(float(v[1]) for v in vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-local", type=int, default=8192)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 1) // max(args.worlds))
    rows = []
    for world in args.worlds:
        res = {mode: run(world, args.n_local, args.d, mode, threads)
               for mode in ("gather", "ring")}
        rows.append((world, res))
    lines = [f"Measured {datetime.date.today()} by `python benchmarks/dist_ring.py --write` "
             f"({platform.machine()}, {os.cpu_count()} cores shared by all ranks, "
             f"{threads} thread(s) per rank, gloo, torch {torch.__version__}). clip_loss "
             f"forward+backward, N_local = {args.n_local}, D = {args.d}, fp32; median of three "
             "steps after a warm-up; per-rank peak extra resident memory (max over ranks).",
             "", "| W | global N | gather: extra RSS | gather: time | ring: extra RSS | "
             "ring: time | ring / gather time |", "|---|---|---|---|---|---|---|"]
    for world, res in rows:
        (gm, gt), (rm, rt) = res["gather"], res["ring"]
        lines.append(f"| {world} | {world * args.n_local:,} | {gm / 2**20:.1f} MiB | "
                     f"{gt:.2f} s | {rm / 2**20:.1f} MiB | {rt:.2f} s | {rt / gt:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results_md import write_block
        write_block("DIST", text)


if __name__ == "__main__":
    main()
