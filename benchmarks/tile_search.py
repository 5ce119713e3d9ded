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
    python benchmarks/tile_search.py --check _pair_kernel bf16 90 128x64x256w8 64x16x256w8s1
        # any kernel: every recorded flag set with the launcher's divisibility hints,
        # retiled to each candidate (owned rows on chip: BLOCK_K = D; "32x32x32cw4": D
        # streamed in chunks), one line per binary; --unaligned-too adds unhinted launches

The --check mode is how the aligned (on-chip) classes of both engines' tables were chosen:
the search above only retiles binaries that already exist at a class, while a new
on-chip class has no recorded binary yet.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch

from contrastive_kernels.proof import aot, catalogue
from contrastive_kernels.backends.triton.tiles import NUM_STAGES, TileConfig

_KERNEL = {"fwd": ("_softmax_fwd_kernel", "Q"), "bwd": ("_softmax_bwd_kernel", "A")}

PAIRS = ((128, 64), (64, 128), (64, 64), (64, 32), (32, 64), (32, 32))
FP64_PAIRS = ((32, 32), (32, 16), (16, 32), (16, 16))
CLASSES = {"half": (16, 32, 64, 128, 256, None), "fp32": (16, 32, 64, 128, None),
           "fp64": (16, 32, None)}
DTYPES = {"half": (torch.float16, torch.bfloat16), "fp32": (torch.float32,),
          "fp64": (torch.float64,)}
_PTR = {cls: tuple(aot.POINTER_TYPE[d] for d in dtypes) for cls, dtypes in DTYPES.items()}


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


def _parse_tile(text: str) -> TileConfig:
    """'64x16x256w8s1' -> TileConfig(64, 16, 256, one chunk, 8 warps, 1 stage);
    '32x32x32cw4' -> D streamed in 32-wide chunks."""
    tiles, _, rest = text.partition("w")
    warps, _, stages = rest.partition("s")
    streamed = tiles.endswith("c")
    bm, bn, bk = map(int, tiles.removesuffix("c").split("x"))
    return TileConfig(bm, bn, bk, not streamed, int(warps), int(stages or NUM_STAGES))


def check(kernel: str, dtype: str, arch: int, tiles: list[str],
          aligned_only: bool = True) -> bool:
    """Compile every flag set of ``kernel`` recorded with divisibility hints on D (the
    aligned launches; with aligned_only False also the unhinted ones), retiled to each
    candidate; print registers and spills per binary. True when no binary spills."""
    ptr = "*" + dtype
    flag_sets = {}
    for spec in aot.engine_variants(arches=(arch,)):
        ce = spec.named_constexprs
        hinted = "D" in spec.divisible_by_16
        # The input operand is every tile kernel's first parameter; other pointers do not
        # say the dtype (half kernels keep fp32 gradients and statistics).
        operand = next(iter(spec.signature.values()))
        if spec.name != kernel or operand != ptr or "D" in ce or \
                (aligned_only and not hinted):
            continue
        key = tuple(sorted((k, str(v)) for k, v in ce.items()
                           if not k.startswith("BLOCK_") and k != "ONE_CHUNK")) + \
            (("16|D", str(hinted)),)
        flag_sets.setdefault(key, spec)
    clean = True
    for text in tiles:
        cfg = _parse_tile(text)
        for key, spec in flag_sets.items():
            r = aot.compile_variant(aot.retile(spec, cfg))
            flags = " ".join(k if v == "True" else f"{k}={v}" for k, v in key
                             if v == "True" or k == "KIND")
            print(f"{text} {flags or '-'}: {r.registers} regs, spill {r.spill_bytes} B, "
                  f"{r.mma_kinds}", flush=True)
            clean &= not (r.spill_bytes or r.local_insts)
    return clean


def main():
    if sys.argv[1:2] == ["--check"]:
        rest = [a for a in sys.argv[2:] if a != "--unaligned-too"]
        kernel, dtype, arch, *tiles = rest
        sys.exit(0 if check(kernel, dtype, int(arch), tiles,
                            aligned_only="--unaligned-too" not in sys.argv) else 1)
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
