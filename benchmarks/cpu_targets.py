"""The C++ CPU engine's two headline numbers, measured interleaved in one process.

1. ``clip_loss`` forward+backward, N = 4096, D = 256, fp32 (default), against
   - the ``"torch"`` reference (same call, backend="torch"), and
   - the matrix-product floor of any O(N)-memory method: four similarity-sized products
     with preallocated outputs (S = Q̂K̂ᵀ, its recompute, dQ̂ = S·K̂, dK̂ = Sᵀ·Q̂).
   Rounds alternate the providers, so a slow phase of a shared machine hits all of them;
   each ratio is the median over rounds of the per-round ratio. The breakdown splits the
   fused time into forward vs one product and backward vs three products.
2. ``nt_xent_loss`` forward+backward at 2N = 65,536 rows, D = 32: extra peak resident
   memory, measured in a fresh process (VmHWM reset before the call).

    python benchmarks/cpu_targets.py [--n 4096 --d 256 --rounds 15] [--write]

``--write`` replaces the block between <!-- CPU:BEGIN --> and <!-- CPU:END --> in
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import time

import torch

import contrastive_kernels as ck
from contrastive_kernels.backends import cpu as cpu_engine



def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class ChunkedClip(torch.autograd.Function):
    """The calibration point the issue names: a plain row-chunked PyTorch CLIP loss
    (O(chunk·N) memory, recomputing backward) on normalized features, scale fixed."""

    @staticmethod
    def forward(ctx, qh, kh, scale, chunk):
        n = qh.shape[0]
        lse, cmax, csum, diag = [], torch.full((n,), -float("inf")), torch.zeros(n), []
        for i in range(0, n, chunk):
            s = scale * (qh[i:i + chunk] @ kh.T)
            lse.append(torch.logsumexp(s, 1))
            diag.append(s.diagonal(i))
            m = torch.maximum(cmax, s.max(0).values)
            csum = csum * torch.exp(cmax - m) + torch.exp(s - m).sum(0)
            cmax = m
        lse, diag, clse = torch.cat(lse), torch.cat(diag), cmax + csum.log()
        ctx.save_for_backward(qh, kh, lse, clse)
        ctx.scale, ctx.chunk = scale, chunk
        return (0.5 * (lse + clse) - diag).mean()

    @staticmethod
    def backward(ctx, g):
        qh, kh, lse, clse = ctx.saved_tensors
        n, scale, chunk = qh.shape[0], ctx.scale, ctx.chunk
        dq, dk = torch.empty_like(qh), torch.zeros_like(kh)
        w = g / n
        for i in range(0, n, chunk):
            s = scale * (qh[i:i + chunk] @ kh.T)
            ds = 0.5 * w * (torch.exp(s - lse[i:i + chunk, None]) + torch.exp(s - clse))
            ds.diagonal(i).sub_(w)
            dq[i:i + chunk] = scale * (ds @ kh)
            dk += scale * (ds.T @ qh[i:i + chunk])
        return dq, dk, None, None


def _fresh_products(qh, kh):
    s = qh @ kh.T
    s2 = qh @ kh.T
    return s @ kh, s2.T @ qh


def clip_providers(n: int, d: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).requires_grad_()
    y = torch.randn(n, d, generator=gen).requires_grad_()
    qh = torch.nn.functional.normalize(x.detach(), dim=1)
    kh = torch.nn.functional.normalize(y.detach(), dim=1)
    s, dq, dk = torch.empty(n, n), torch.empty(n, d), torch.empty(n, d)
    # The engine's own forward and backward calls, for the breakdown.
    idx = torch.arange(n)
    scale = torch.tensor(10.0)
    rq, rk = cpu_engine.inverse_norms(x.detach(), True), cpu_engine.inverse_norms(
        y.detach(), True)
    lse, pos, clse, _ = cpu_engine.forward(x.detach(), y.detach(), rq, rk, scale, idx, idx, None,
                                        False, True)
    g = torch.randn(n, generator=gen)

    def loss(backend):
        def run():
            ck.clip_loss(x, y, 10.0, normalize=True, backend=backend).backward()
        return run

    return {
        "fused": loss("cpu"),
        "reference": loss("torch"),
        "chunked torch": lambda: ChunkedClip.apply(qh.clone().requires_grad_(),
                                                   kh.clone().requires_grad_(), 10.0,
                                                   1024).backward(),
        "4 products": lambda: (torch.mm(qh, kh.T, out=s), torch.mm(qh, kh.T, out=s),
                               torch.mm(s, kh, out=dq), torch.mm(s.T, qh, out=dk)),
        "4 products, fresh outputs": lambda: _fresh_products(qh, kh),
        "engine fwd": lambda: cpu_engine.forward(x.detach(), y.detach(), rq, rk, scale, idx,
                                                 idx, None, False, True),
        "1 product": lambda: torch.mm(qh, kh.T, out=s),
        "engine bwd": lambda: cpu_engine.backward(x.detach(), y.detach(), rq, rk, scale, idx,
                                                  idx, lse, clse, g, g, g, False, True, False),
        "3 products": lambda: (torch.mm(qh, kh.T, out=s), torch.mm(s, kh, out=dq),
                               torch.mm(s.T, qh, out=dk)),
    }


def measure(providers: dict, rounds: int) -> dict[str, list[float]]:
    for fn in providers.values():  # warm-up
        fn()
    times = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            times[name].append(_timed(fn))
    return times


def ratio(times, a, b) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


_RSS_SCRIPT = r"""
import sys, time, torch
import contrastive_kernels as ck
half, d = int(sys.argv[1]), int(sys.argv[2])
gen = torch.Generator().manual_seed(0)
z1 = torch.randn(half, d, generator=gen).requires_grad_()
z2 = torch.randn(half, d, generator=gen).requires_grad_()
ck.nt_xent_loss(z1[:64], z2[:64], backend="cpu").backward()  # load everything once
def status(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
t0 = time.perf_counter()
ck.nt_xent_loss(z1, z2, backend="cpu").backward()
print((status("VmHWM") - base) * 1024, time.perf_counter() - t0)
"""


def nt_xent_memory(half: int, d: int) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(half), str(d)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def report(args) -> str:
    times = measure(clip_providers(args.n, args.d), args.rounds)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    extra, secs = nt_xent_memory(args.half, args.mem_d)
    rows = 2 * args.half
    lines = [
        f"Measured {datetime.date.today()} by `python benchmarks/cpu_targets.py --write` "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        f", {args.rounds} interleaved rounds; medians).",
        "",
        f"**clip_loss forward+backward, N = {args.n}, D = {args.d}, fp32**",
        "",
        "| provider | median ms |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in med.items()]
    lines += [
        "",
        f"- fused / reference: **{ratio(times, 'fused', 'reference'):.3f}** (target ≤ 0.6)",
        f"- fused / four products: **{ratio(times, 'fused', '4 products'):.3f}** "
        "(target ≤ 1.25; products into preallocated outputs, the strictest floor)",
        f"- fused / four products as plain PyTorch expressions (each allocating its N×N "
        f"output): **{ratio(times, 'fused', '4 products, fresh outputs'):.3f}**",
        f"- calibration: a plain row-chunked PyTorch loop (1024-row chunks) / reference "
        f"{ratio(times, 'chunked torch', 'reference'):.3f}, / four products "
        f"{ratio(times, 'chunked torch', '4 products'):.3f}",
        f"- breakdown: engine forward / one product "
        f"{ratio(times, 'engine fwd', '1 product'):.3f}; engine backward / three products "
        f"{ratio(times, 'engine bwd', '3 products'):.3f}. The rest of the fused call "
        f"(normalization, O(N) loss assembly, autograd) is "
        f"{med['fused'] - med['engine fwd'] - med['engine bwd']:.1f} ms.",
        "",
        f"**nt_xent_loss forward+backward, 2N = {rows:,} rows, D = {args.mem_d}, fp32**: "
        f"extra peak resident memory {extra / 2**20:.0f} MiB (target < 1536 MiB), "
        f"{secs:.1f} s. One {rows:,}² fp32 logit matrix would be "
        f"{rows * rows * 4 / 2**30:.0f} GiB; the reference needs several.",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--half", type=int, default=32768, help="NT-Xent rows per view")
    ap.add_argument("--mem-d", type=int, default=32)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    text = report(args)
    print(text)
    if args.write:
        from results_md import write_block
        write_block("CPU", text)


if __name__ == "__main__":
    main()
