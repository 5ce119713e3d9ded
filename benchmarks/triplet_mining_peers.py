"""Batch-all and semi-hard triplet losses against the libraries people use for them:
time (forward + backward) and peak extra memory per batch size, and the largest batch
each reaches on this machine.

Providers (each run in a fresh process, so its peak resident memory is its own):
  ours_batch_all   contrastive_kernels.triplet_margin_loss(mining="batch_all"), cpu engine
  ours_semi_hard   contrastive_kernels.triplet_margin_loss(mining="semi_hard")
  pml_batch_all    pytorch-metric-learning TripletMarginLoss (all triplets as index lists,
                   AvgNonZeroReducer), LpDistance without normalization
  st_batch_all     sentence-transformers BatchAllTripletLoss (positive pairs × N)
  st_semi_hard     sentence-transformers BatchSemiHardTripletLoss (N × N, sorted)
All on Euclidean distances of the raw embeddings with margin 1.0, on the same inputs: the
printed batch-all losses agree across providers, as do the semi-hard ones.

Batches are 4 samples per class (the usual P×K sampling), D = 128, float32. A provider is
doubled from --start until it fails: out of memory under --budget-gb (RLIMIT_DATA above
its size at the start), or slower than --timeout seconds.

    python benchmarks/triplet_mining_peers.py --json benchmarks/triplet_mining.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PROVIDERS = ["ours_batch_all", "ours_semi_hard", "pml_batch_all", "st_batch_all",
             "st_semi_hard"]
PER_CLASS = 4
MARGIN = 1.0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def _loss_fn(provider: str):
    """(embeddings, labels) -> loss for a provider."""
    import contrastive_kernels as ck
    if provider.startswith("ours"):
        mining = provider[len("ours_"):]
        return lambda x, y: ck.triplet_margin_loss(x, y, MARGIN, mining=mining, backend="cpu")
    if provider == "pml_batch_all":
        from pytorch_metric_learning.distances import LpDistance
        from pytorch_metric_learning.losses import TripletMarginLoss
        return TripletMarginLoss(margin=MARGIN,
                                 distance=LpDistance(normalize_embeddings=False))
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.sentence_transformer import losses as st
    cls = st.BatchAllTripletLoss if provider == "st_batch_all" else st.BatchSemiHardTripletLoss
    loss = cls(None, margin=MARGIN)
    return lambda x, y: loss.compute_loss_from_embeddings([x], y)


def _inputs(n: int, d: int):
    """(embeddings (n, d) float32, labels (n,): PER_CLASS samples per class)."""
    import torch
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, d, generator=gen), torch.arange(n) // PER_CLASS


def run_one(provider: str, n: int, d: int, budget_gb: float) -> dict:
    """One forward + backward in this process; the peak extra resident memory."""
    fn = _loss_fn(provider)
    x, labels = _inputs(n, d)
    x.requires_grad_()
    cap = _status_kb("VmData") * 1024 + int(budget_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    try:
        loss = fn(x, labels)
        loss.backward()
    except (MemoryError, RuntimeError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {"provider": provider, "n": n, "oom": True}
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") - before
    return {"provider": provider, "n": n, "seconds": seconds, "peak_mb": peak / 1024,
            "loss": float(loss.detach()), "oom": False}


def sweep(providers, start: int, stop: int, d: int, budget_gb: float, timeout: float):
    rows = []
    for provider in providers:
        n = start
        while n <= stop:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", provider, "--n", str(n),
                   "--d", str(d), "--budget-gb", str(budget_gb)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                row = (json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0
                       else {"provider": provider, "n": n, "oom": True,
                             "error": res.stderr.strip().splitlines()[-1:]})
            except subprocess.TimeoutExpired:
                row = {"provider": provider, "n": n, "timeout": timeout}
            rows.append(row)
            print(_describe(row), flush=True)
            if row.get("oom") or "timeout" in row:
                break
            n *= 2
    return rows


def _describe(row: dict) -> str:
    head = f"{row['provider']:>15} N={row['n']:>6}"
    if "timeout" in row:
        return f"{head}  slower than {row['timeout']:.0f} s"
    if row.get("oom"):
        return f"{head}  out of memory"
    return (f"{head}  {row['seconds']:8.2f} s  {row['peak_mb']:9.0f} MB  "
            f"loss {row['loss']:.6f}")


def largest(rows) -> dict:
    """provider -> the largest N it completed."""
    out = {}
    for row in rows:
        if not row.get("oom") and "timeout" not in row:
            out[row["provider"]] = max(out.get(row["provider"], 0), row["n"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--providers", nargs="+", default=PROVIDERS, choices=PROVIDERS)
    parser.add_argument("--start", type=int, default=1024)
    parser.add_argument("--stop", type=int, default=65536)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write the rows and the largest N per provider")
    parser.add_argument("--one", choices=PROVIDERS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.d, args.budget_gb)))
        return
    rows = sweep(args.providers, args.start, args.stop, args.d, args.budget_gb, args.timeout)
    reach = largest(rows)
    print("largest batch:", reach)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"d": args.d, "per_class": PER_CLASS, "budget_gb": args.budget_gb,
                       "rows": rows, "largest": reach}, f, indent=1)


if __name__ == "__main__":
    main()
