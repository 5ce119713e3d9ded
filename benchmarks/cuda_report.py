"""Resource table of the built CUDA C++ extension (no GPU needed), into RESULTS.md.

    python benchmarks/cuda_report.py            # print
    python benchmarks/cuda_report.py --write    # also replace the CUDA block of RESULTS.md

Reads contrastive_kernels._C_cuda with the triton wheel's cuobjdump: per kernel and arch,
registers, static shared memory, stack/local bytes, STL/LDL count and tensor-core
instructions (what ptxas -v reports, read back from the cubin).
"""
from __future__ import annotations

import argparse
import datetime

import torch

from contrastive_kernels import dispatch
from contrastive_kernels.proof import cuda_resources



def report() -> str:
    found = cuda_resources.kernels()
    bad = cuda_resources.problems(found)
    half = [k for k in found if k.is_tile_kernel and k.dtype in ("float16", "bfloat16")]
    lines = [
        f"Generated {datetime.date.today()} by `python benchmarks/cuda_report.py --write` "
        f"(torch {torch.__version__}, nvcc for TORCH_CUDA_ARCH_LIST="
        f"{dispatch.cuda_archs()}, read with cuobjdump; no GPU).",
        "",
        f"- {len(found)} kernels ({len(found) // 2} per arch); "
        f"{sum(1 for k in found if k.stack or k.local or k.local_insts)} use local memory.",
        f"- {len(half)} half-precision tile kernels, "
        f"{sum(1 for k in half if 'HMMA' in k.mma_kinds)} with HMMA (mma.sync m16n8k16 fed by ldmatrix, csrc/cuda/mma.cuh).",
        f"- problems: {'none' if not bad else '; '.join(bad)}",
        "",
        "| kernel | arch | regs | shared B | stack B | STL/LDL | MMA instrs |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in sorted(found, key=lambda k: (k.name, k.arch)):
        lines.append(f"| {k.name} | sm_{k.arch} | {k.registers} | {k.shared} | {k.stack} | "
                     f"{k.local_insts} | {k.mma} {k.mma_kinds if k.mma else ''} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    text = report()
    print(text)
    if ap.parse_args().write:
        from results_md import write_block
        write_block("CUDA", text)


if __name__ == "__main__":
    main()
