"""On-device sweep of the Triton tile table: settle the model's choices with measurements.

The tile tables (backends/triton/softmax.py) are chosen without a GPU: the largest tiles
that compile without spills, sized by counted traffic (benchmarks/traffic.py). The first
GPU session runs this (benchmarks/gpu_check.sh does): for CLIP, SigLIP and a MoCo queue at
N = 16k–64k it times forward + backward with a few candidate (forward, backward) tiles per
dtype, every candidate compiled for the card at hand, and writes the winners and their
times to RESULTS.md (block TILE_SWEEP), next to the table's current choice.

    python benchmarks/tile_sweep.py                 # on a GPU, ~3 min
    python benchmarks/tile_sweep.py --dry           # list the candidates (no GPU needed)
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from results_md import write_block  # noqa: E402

# (label, forward tile, backward tile); a tile is (BLOCK_M, BLOCK_N, BLOCK_K or None for
# on-chip rows, warps, stages). The first is the table's current sm_90 aligned choice.
CANDIDATES = {
    256: (("table", None, None),
          ("128x64/64x16 s1", (128, 64, None, 8, 2), (64, 16, None, 8, 1)),
          ("128x64/128x32 s3", (128, 64, None, 8, 3), (128, 32, None, 8, 2)),
          ("128x128/64x64", (128, 128, None, 8, 2), (64, 64, None, 8, 2)),
          ("64x64/64x32", (64, 64, None, 4, 2), (64, 32, None, 8, 2)),
          ("streamed 128x64k64", (128, 64, 64, 8, 2), (64, 64, 64, 8, 2))),
    128: (("table", None, None),
          ("128x128/128x64", (128, 128, None, 8, 2), (128, 64, None, 8, 2)),
          ("128x64/64x64 s3", (128, 64, None, 8, 3), (64, 64, None, 8, 3))),
}
PROBLEMS = (("clip", 16384, 16384, 256), ("clip", 65536, 65536, 256),
            ("siglip", 16384, 16384, 256), ("queue", 256, 65536, 128))


@contextlib.contextmanager
def tiles(d: int, fwd, bwd):
    """The softmax engine's aligned bf16/fp16 tile class of width d (both the "half" and
    the bf16-only rows) replaced by (fwd, bwd) for the duration (the table itself when
    both are None)."""
    from contrastive_kernels.backends.triton import softmax as te
    saved = te._ALIGNED_TILES
    if fwd is not None:
        sm90 = dict(saved[90])
        for key, rows in saved[90].items():
            kept = [r for r in rows if r[0] != d] + [(d, fwd, bwd)]
            sm90[key] = tuple(sorted(kept, key=lambda r: r[0]))
        te._ALIGNED_TILES = {**saved, 90: sm90}
    try:
        yield
    finally:
        te._ALIGNED_TILES = saved


def _inputs(kind, n, m, d):
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn(m, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    return a.requires_grad_(), b.requires_grad_(kind != "queue")


def _step(kind, a, b):
    import contrastive_kernels as ck
    if kind == "clip":
        loss = ck.clip_loss(a, b, 10.0, normalize=True, backend="triton")
    elif kind == "siglip":
        loss = ck.siglip_loss(a, b, 10.0, -10.0, backend="triton")
    else:
        loss = ck.info_nce(a, a.detach().roll(1, 0), b, backend="triton")
    loss.backward()


def _time(kind, a, b, reps=5) -> float:
    _step(kind, a, b)  # compile
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        _step(kind, a, b)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="list the candidates and exit")
    ap.add_argument("--write", action="store_true", help="write the RESULTS.md block")
    args = ap.parse_args()
    if args.dry:
        for kind, n, m, d in PROBLEMS:
            for label, fwd, bwd in CANDIDATES[d]:
                print(f"{kind} N={n} M={m} D={d}: {label} fwd={fwd} bwd={bwd}")
        return 0
    if not torch.cuda.is_available():
        print("tile_sweep.py needs a CUDA GPU (use --dry to list the candidates)")
        return 2
    rows = [f"Measured {time.strftime('%Y-%m-%d')} on {torch.cuda.get_device_name()} "
            f"(bf16, forward + backward, ms per step, mean of 5):", "",
            "| problem | candidate | ms | |", "|---|---|---|---|"]
    for kind, n, m, d in PROBLEMS:
        results = []
        for label, fwd, bwd in CANDIDATES[d]:
            with tiles(d, fwd, bwd):
                try:
                    results.append((_time(kind, *_inputs(kind, n, m, d)), label))
                except Exception as exc:  # one failing candidate must not end the sweep
                    print(f"{kind} {label}: {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
        best = min(results)[1] if results else None
        for ms, label in results:
            rows.append(f"| {kind} N={n} M={m} D={d} | {label} | {ms:.2f} | "
                        f"{'**winner**' if label == best else ''} |")
            print(rows[-1], flush=True)
    if args.write:
        write_block("TILE_SWEEP", "\n".join(rows),
                    heading="## Tile sweep on a GPU (settles the tile table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
