"""The CPU pairwise engine's numbers (SigLIP, batch-hard triplet, Hadsell contrastive),
measured interleaved in one process.

1. Forward+backward at N = 4096, D = 256, fp32 (default) of each loss, against
   - the ``"torch"`` reference (same call, backend="torch"), and
   - its matrix-product floor: similarity-sized products into preallocated outputs —
     SigLIP 3 (no row statistics, so loss and gradient come from one pass: S, dS·K̂,
     dSᵀ·Q̂), triplet 1 (the mining pass; the loss and gradient are O(N·D)), Hadsell
     contrastive 4 (forward, recompute, two gradient products).
   Rounds alternate the providers so a slow phase of a shared machine hits all of them;
   each ratio is the median over rounds of the per-round ratio.
2. Forward+backward at N = 65,536, D = 32: extra peak resident memory of each loss in a
   fresh process (VmHWM reset before the call).

    python benchmarks/pairwise_targets.py [--n 4096 --d 256 --rounds 11] [--write]

``--write`` replaces the block between <!-- PAIRWISE:BEGIN --> and <!-- PAIRWISE:END -->
in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys

import torch

from contrastive_kernels.problems import make_problem
from cpu_targets import measure, ratio

LOSSES = {"siglip_loss": 3, "triplet_margin_loss": 1, "contrastive_loss": 4}


def providers(n: int, d: int) -> dict:
    """Per loss: the fused call, the reference call, and its product floor."""
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    s, out = torch.empty(n, n), torch.empty(n, d)

    def products(count):
        def run():
            torch.mm(a, b.T, out=s)
            for i in range(count - 1):
                torch.mm(s, b, out=out) if i % 2 == 0 else torch.mm(s.T, a, out=out)
        return run

    found = {}
    for loss, floor in LOSSES.items():
        run, leaves = make_problem(loss, n, d, torch.float32, "cpu")
        for backend, label in (("cpu", "fused"), ("torch", "reference")):
            found[f"{loss} {label}"] = (
                lambda r=run, lv=leaves, bk=backend: torch.autograd.grad(r(bk), lv))
        found[f"{loss} floor"] = products(floor)
    return found


_RSS_SCRIPT = r"""
import sys, time, torch
from contrastive_kernels.problems import make_problem
loss, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
small, small_leaves = make_problem(loss, 64, d, torch.float32, "cpu")
torch.autograd.grad(small("cpu"), small_leaves)  # load everything once
run, leaves = make_problem(loss, n, d, torch.float32, "cpu")
def status(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
t0 = time.perf_counter()
torch.autograd.grad(run("cpu"), leaves)
print((status("VmHWM") - base) * 1024, time.perf_counter() - t0)
"""


def memory(loss: str, n: int, d: int) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, loss, str(n), str(d)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def report(args) -> str:
    times = measure(providers(args.n, args.d), args.rounds)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    lines = [
        f"Measured {datetime.date.today()} by `python benchmarks/pairwise_targets.py --write` "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        f", {args.rounds} interleaved rounds; medians).",
        "",
        f"**forward+backward, N = {args.n}, D = {args.d}, fp32** (problems from "
        "`contrastive_kernels.problems`: SigLIP normalized with open_clip's init scale 10 / "
        "bias −10; triplet and contrastive on unit-scale rows, ~4 rows per class)",
        "",
        "| loss | fused ms | reference ms | floor ms (products) | fused / reference "
        "(≤ 0.6) | fused / floor (≤ 1.25) |",
        "|---|---|---|---|---|---|",
    ]
    for loss, count in LOSSES.items():
        f, r, fl = (f"{loss} fused", f"{loss} reference", f"{loss} floor")
        lines.append(f"| {loss} | {med[f]:.1f} | {med[r]:.1f} | {med[fl]:.1f} ({count}) | "
                     f"**{ratio(times, f, r):.3f}** | **{ratio(times, f, fl):.3f}** |")
    lines += ["", f"**forward+backward, N = {args.mem_n:,}, D = {args.mem_d}, fp32, fresh "
              "process**: extra peak resident memory (target < 1536 MiB); one "
              f"{args.mem_n:,}² fp32 matrix would be {args.mem_n ** 2 * 4 / 2**30:.0f} GiB.",
              "", "| loss | extra peak RSS | time |", "|---|---|---|"]
    for loss in LOSSES:
        extra, secs = memory(loss, args.mem_n, args.mem_d)
        lines.append(f"| {loss} | {extra / 2**20:.0f} MiB | {secs:.1f} s |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--mem-n", type=int, default=65536)
    ap.add_argument("--mem-d", type=int, default=32)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    text = report(args)
    print(text)
    if args.write:
        from results_md import write_block
        write_block("PAIRWISE", text)


if __name__ == "__main__":
    main()
