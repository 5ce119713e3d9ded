"""Choose the Triton tile table from compiler resource usage, without a GPU.

For each input dtype and feature-width class, compile the heaviest flag set of the forward
and backward kernels for sm_80 and sm_90 over candidate tiles, and keep the candidates that
spill nothing on either arch. Ranking among the spill-free ones prefers larger tiles (fewer
recomputed loads per FLOP). The chosen rows are copied into ``tile_config`` by hand; the
AOT test then proves every launched variant compiles without spills.

    python benchmarks/tile_search.py > /tmp/tiles.txt
"""
from __future__ import annotations

import itertools
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

from contrastive_kernels.ops import aot
from contrastive_kernels.ops import triton_engine as te


BLOCK_PAIRS = ((64, 64), (64, 32), (32, 64), (32, 32), (128, 64), (64, 128))
FP64_PAIRS = ((32, 32), (32, 16), (16, 32), (16, 16))


def _candidates(dtype, d_pow2):
    """Tiles worth trying: one register tile up to D=128, D streamed in chunks above."""
    pairs = FP64_PAIRS if dtype == torch.float64 else BLOCK_PAIRS
    for (bm, bn), warps in itertools.product(pairs, (4, 8)):
        if d_pow2 <= (32 if dtype == torch.float64 else 128):
            yield bm, bn, d_pow2, True, warps
        else:
            for bk in (16, 32) if dtype == torch.float64 else (32, 64):
                yield bm, bn, bk, False, warps


def _variants(dtype, bm, bn, bk, one, warps):
    acc = te._tl_dtype(dtype)
    tiles = dict(BLOCK_K=bk, ONE_CHUNK=one, ACC=acc, UPCAST=False, PREC="ieee")
    bwd = dict(BLOCK_A=bm, BLOCK_B=bn, TRANSPOSED=False, ATOMIC_B=True, WRITE_DSCALE=True,
               MASK_DIAG=True, HAS_COL=True, **tiles)
    fwd = dict(BLOCK_M=bm, BLOCK_N=bn, MASK_DIAG=True, HAS_EXTRA=False, NEED_COL=True, **tiles)
    return [aot.Variant("bwd", "_softmax_bwd_kernel",
                        aot._with_constexprs(aot._bwd_signature(dtype), bwd), bwd, warps, 2,
                        dtype, True),
            aot.Variant("fwd", "_softmax_fwd_kernel",
                        aot._with_constexprs(aot._fwd_signature(dtype), fwd), fwd, warps, 2,
                        dtype, True)]


def _stack(job):
    v, arch = job
    try:
        rep = aot.compile_variant(v, arch)
        return rep.spill_bytes, rep.registers
    except Exception as exc:  # a tile the compiler rejects is simply not a candidate
        return 10**9, str(exc)[:60]


def main():
    dtypes = [getattr(torch, a) for a in (sys.argv[1:] or ["bfloat16", "float32", "float64"])]
    jobs, keys = [], []
    for dtype in dtypes:
        for d_pow2 in ((16, 32, 64) if dtype == torch.float64 else (16, 32, 64, 128, 256)):
            for cand in _candidates(dtype, d_pow2):
                for v in _variants(dtype, *cand):
                    for arch in aot.ARCHES:
                        jobs.append((v, arch))
                        keys.append((str(dtype), d_pow2, cand, v.name, arch))
    with ProcessPoolExecutor(2) as ex:
        for key, (spill, regs) in zip(keys, ex.map(_stack, jobs, chunksize=4)):
            print(*key, "spill", spill, "regs", regs, flush=True)


if __name__ == "__main__":
    main()
