"""Choose the Triton tile table from compiler resource usage, without a GPU.

For each dtype class and feature-width class, walk candidate tiles from the largest down
and keep the first one whose *every* launchable binary (the catalogue's run-time specs of
that class: all flag sets, both precisions for fp32, all backward passes, aligned and not)
compiles for sm_80 and sm_90 without spilling, retiled to the candidate. The result
is printed as the ``_TILE_TABLE`` literal of contrastive_kernels/backends/triton/softmax.py;
tests/test_aot.py then re-proves the whole launcher set. Larger tiles first because they
reload less per FLOP; no timing is involved (that needs a GPU).

    python benchmarks/tile_search.py                      # every class: ~1 h on 2 cores
    python benchmarks/tile_search.py fp32:64 fp64:None --pairs 32x32 16x32
                                                          # some classes, given tiles only
"""
from __future__ import annotations

import argparse
import itertools

import torch

from contrastive_kernels.proof import aot, catalogue
from contrastive_kernels.backends.triton.tiles import NUM_STAGES, TileConfig

_PTR = {"half": ("*fp16", "*bf16"), "fp32": ("*fp32",), "fp64": ("*fp64",)}
_KERNEL = {"fwd": ("_softmax_fwd_kernel", "Q"), "bwd": ("_softmax_bwd_kernel", "A")}

PAIRS = ((128, 64), (64, 128), (64, 64), (64, 32), (32, 64), (32, 32))
FP64_PAIRS = ((32, 32), (32, 16), (16, 32), (16, 16))
CLASSES = {"half": (16, 32, 64, 128, 256, None), "fp32": (16, 32, 64, 128, None),
           "fp64": (16, 32, None)}
DTYPES = {"half": (torch.float16, torch.bfloat16), "fp32": (torch.float32,),
          "fp64": (torch.float64,)}


def _candidates(cls: str, max_d, pairs=None):
    pairs = pairs or (FP64_PAIRS if cls == "fp64" else PAIRS)
    chunks = (None,) if max_d is not None else ((32, 16) if cls == "fp64" else (64, 32))
    for (bm, bn), warps, bk in itertools.product(pairs, (8, 4), chunks):
        yield bm, bn, bk, warps


def _clean(cls, max_d, kind, cand) -> bool:
    bm, bn, bk, warps = cand
    d_pow2 = max_d if max_d is not None else None
    cfg = TileConfig(bm, bn, bk or d_pow2, bk is None, warps, NUM_STAGES)
    name, operand = _KERNEL[kind]
    variants = {}
    for spec in _specs():
        ce = spec.named_constexprs
        if spec.name != name or spec.signature[operand] not in _PTR[cls] or \
                ce["ONE_CHUNK"] != (max_d is not None) or \
                (max_d is not None and ce["BLOCK_K"] != max_d):
            continue
        moved = aot.retile(spec, cfg)
        variants.setdefault(aot.variant_name(moved) + str(spec.target), moved)
    return not aot.problems(aot.compile_all(variants=list(variants.values())))


_SPECS = []


def _specs():
    if not _SPECS:
        _SPECS.extend(aot.engine_variants())
    return _SPECS


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("classes", nargs="*", help="dtype:maxD, e.g. fp32:64 or fp64:None")
    parser.add_argument("--pairs", nargs="*", help="BLOCK_MxBLOCK_N tiles to try, in order")
    args = parser.parse_args()
    wanted = [tuple(c.split(":")) for c in args.classes]
    pairs = [tuple(map(int, p.split("x"))) for p in args.pairs] if args.pairs else None
    table = {}
    for cls, classes in CLASSES.items():
        for max_d in classes:
            if wanted and (cls, str(max_d)) not in wanted:
                continue
            picks = []
            for kind in ("fwd", "bwd"):
                pick = next((c for c in _candidates(cls, max_d, pairs)
                             if _clean(cls, max_d, kind, c)), None)
                print(f"{cls} D<={max_d} {kind}: {pick}", flush=True)
                picks.append(pick)
            table.setdefault(cls, []).append((max_d, *picks))
    print("_TILE_TABLE = {")
    for cls, rows in table.items():
        print(f"    {cls!r}: (" + ",\n             ".join(map(str, rows)) + "),")
    print("}")


if __name__ == "__main__":
    main()
