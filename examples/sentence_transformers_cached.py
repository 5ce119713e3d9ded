"""Train a small text-embedding model with sentence-transformers' own trainer and
contrastive_kernels' cached MNRL at a batch that sentence-transformers' uncached loss
cannot fit in the same memory. Offline: the model (a random BERT) and the data (pairs of
random-word sentences sharing words) are built here, nothing is downloaded.

    python examples/sentence_transformers_cached.py --loss ours_cached --batch 16384
    python examples/sentence_transformers_cached.py --compare --batches 1024 4096 16384 \\
        --budget-mb 1500

One run trains one loss and prints its loss per step and its peak extra memory (resident
set growth over the process before training). ``--budget-mb`` caps the process's data
memory at that much above its size before training (RLIMIT_DATA), so a loss that needs
more fails with an out-of-memory error instead of swapping. ``--compare`` runs every loss
at every batch in fresh processes and prints a table (``--json`` writes it).

Losses: ``st`` sentence-transformers' MultipleNegativesRankingLoss (materializes the
N × N similarities and keeps every encoder activation), ``st_cached`` its
CachedMultipleNegativesRankingLoss (mini-batches of the similarity rows), ``ours`` this
library's MultipleNegativesRankingLoss (no N × N, full encoder graph), ``ours_cached`` its
CachedMultipleNegativesRankingLoss (no N × N, one mini-batch of activations at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

LOSSES = ("st", "st_cached", "ours", "ours_cached")


def _vm_data_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_pairs(count: int, seed: int):
    """(anchor, positive) sentences: the positive shares half of the anchor's words."""
    import torch
    from contrastive_kernels.testing import random_sentences
    gen = torch.Generator().manual_seed(seed)
    anchors = random_sentences(count, gen, min_words=6, max_words=12)
    positives = []
    for a, extra in zip(anchors, random_sentences(count, gen, min_words=3, max_words=6)):
        words = a.split()
        positives.append(" ".join(words[: len(words) // 2] + extra.split()))
    return anchors, positives


def build_loss(name: str, model, mini_batch: int):
    from sentence_transformers.sentence_transformer import losses as st
    from contrastive_kernels.integrations import sentence_transformers as ours
    if name == "st":
        return st.MultipleNegativesRankingLoss(model)
    if name == "st_cached":
        return st.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch)
    if name == "ours":
        return ours.MultipleNegativesRankingLoss(model)
    return ours.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch)


def train(loss_name: str, batch: int, steps: int, mini_batch: int, budget_mb: float | None,
          seed: int = 0) -> dict:
    """Train ``steps`` steps of ``batch`` pairs with sentence-transformers' trainer;
    returns the losses and the peak extra memory (bytes), or the out-of-memory error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from contrastive_kernels.testing import tiny_sentence_transformer

    torch.manual_seed(seed)
    workdir = tempfile.mkdtemp(prefix="ck_st_example_")
    model = tiny_sentence_transformer(os.path.join(workdir, "model"), hidden=64, layers=2,
                                      dropout=0.1, max_seq_length=16)
    anchors, positives = make_pairs(batch * steps, seed)
    data = Dataset.from_dict({"anchor": anchors, "positive": positives})
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(workdir, "out"), per_device_train_batch_size=batch,
        max_steps=steps, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, dataloader_drop_last=True, seed=seed,
        disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=build_loss(loss_name, model, mini_batch))
    before = _peak_rss_bytes()
    if budget_mb is not None:
        cap = _vm_data_bytes() + int(budget_mb * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
    try:
        trainer.train()
    except (MemoryError, RuntimeError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {"loss": loss_name, "batch": batch, "oom": True,
                "error": str(exc).splitlines()[0][:200]}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loss": loss_name, "batch": batch, "oom": False, "losses": losses,
            "peak_extra_mb": (_peak_rss_bytes() - before) / 2 ** 20}


def compare(batches, steps, mini_batch, budget_mb, losses=LOSSES) -> list[dict]:
    """Every loss at every batch, each in a fresh process (a clean peak)."""
    rows = []
    for batch in batches:
        for name in losses:
            cmd = [sys.executable, os.path.abspath(__file__), "--loss", name, "--batch",
                   str(batch), "--steps", str(steps), "--mini-batch", str(mini_batch),
                   "--result-json"]
            if budget_mb is not None:
                cmd += ["--budget-mb", str(budget_mb)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode != 0 or not line:
                # Killed outright (the kernel's OOM killer) counts as not fitting too.
                rows.append({"loss": name, "batch": batch, "oom": True,
                             "error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]})
            else:
                rows.append(json.loads(line[-1]))
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    if r["oom"]:
        return f"{r['loss']:12s} batch {r['batch']:6d}: out of memory ({r['error']})"
    return (f"{r['loss']:12s} batch {r['batch']:6d}: peak extra memory "
            f"{r['peak_extra_mb']:8.1f} MB, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")


def plot(json_path: str, png_path: str) -> None:
    """Peak extra memory against batch size, one line per loss, from a --compare JSON."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(json_path) as f:
        rows = json.load(f)["rows"]
    labels = {"st": "sentence-transformers MNRL", "st_cached": "sentence-transformers cached",
              "ours": "contrastive_kernels MNRL", "ours_cached": "contrastive_kernels cached"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in LOSSES:
        pts = [(r["batch"], r["peak_extra_mb"]) for r in rows
               if r["loss"] == name and not r["oom"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=labels[name],
                    linestyle="--" if name.startswith("st") else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (pairs)")
    ax.set_ylabel("peak extra memory (MB)")
    ax.set_title("One training step's memory, offline BERT (2 x 64), CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", choices=LOSSES, default="ours_cached")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mini-batch", type=int, default=64)
    parser.add_argument("--budget-mb", type=float, default=None)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--batches", type=int, nargs="*", default=[1024, 4096, 16384])
    parser.add_argument("--losses", nargs="*", choices=LOSSES, default=list(LOSSES),
                        help="--compare: these losses only")
    parser.add_argument("--json", default=None, help="--compare: write the rows here")
    parser.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"),
                        help="plot a --compare JSON and exit")
    parser.add_argument("--result-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plot:
        plot(*args.plot)
        return 0
    if args.compare:
        rows = compare(args.batches, args.steps, args.mini_batch, args.budget_mb, args.losses)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"budget_mb": args.budget_mb, "steps": args.steps,
                           "mini_batch": args.mini_batch, "rows": rows}, f, indent=1)
        return 0
    result = train(args.loss, args.batch, args.steps, args.mini_batch, args.budget_mb)
    print(json.dumps(result) if args.result_json else _row(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
