"""The CUDA C++ engine's kernels, executed: every per-loss harness test on backend="cuda"
under CONTRASTIVE_KERNELS_CUDA_EMULATE=1 (the same kernel sources compiled against the CPU
emulation of the CUDA execution model in csrc/emu: one fiber per CUDA thread, real
barriers, wmma as warp collectives).

The variable must be set before contrastive_kernels is imported (it decides which extension
backs "cuda"), so the harness runs in a child pytest, once for all loss files: fp64
reference, odd shapes down to 1×1, every reduction, random upstream gradients, fp16/bf16
through the wmma emulation, fp64 gradcheck, NaN and zero rows, the deterministic backward)
and the CUDA-specific tests of test_cuda_engine.py (half-precision gradient scaling, CUDA
vs Triton agreement, mining, bitwise-reproducible deterministic pairwise backward).
The non-finite matrix on the emulator (444 cases, ~9 min here) is not part of this run:
`CONTRASTIVE_KERNELS_CUDA_EMULATE=1 python -m pytest tests/test_nonfinite.py -k cuda`.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from contrastive_kernels import _build_info

HERE = pathlib.Path(__file__).resolve().parent
EMULATED_FILES = ["test_info_nce.py", "test_nt_xent.py", "test_clip.py", "test_siglip.py",
                  "test_simcse.py", "test_supcon.py", "test_n_pair.py", "test_triplet.py",
                  "test_contrastive.py", "test_multiple_negatives_ranking.py",
                  "test_integration_triplet_peers.py",
                  "test_engine_boundary.py", "test_engine_negatives.py",
                  "test_cuda_engine.py"]
# test_cuda_engine.py's tests that need real hardware: two on CUDA streams, two on compiled
# (not interpreted) Triton half tile products.
EXPECTED_SKIPS = 4

pytestmark = pytest.mark.skipif(not getattr(_build_info, "EMU_BUILT", False),
                                reason="the CUDA emulation extension was not built: "
                                       f"{getattr(_build_info, 'EMU_REASON', '')}")


def test_the_whole_harness_passes_on_the_emulated_cuda_engine():
    env = dict(os.environ, CONTRASTIVE_KERNELS_CUDA_EMULATE="1")
    files = [str(HERE / f) for f in EMULATED_FILES]
    # "-k cuda": the cuda cases of the per-loss files, and all of test_cuda_engine.py
    # (pytest matches the module name too).
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-k",
           "cuda"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent,
                         timeout=1800)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    summary = res.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    skipped = re.search(r"(\d+) skipped", summary)
    assert passed >= 320, tail  # every file contributed its cases
    assert (int(skipped.group(1)) if skipped else 0) <= EXPECTED_SKIPS, tail


def test_auto_never_picks_the_emulated_build():
    code = ("import torch, contrastive_kernels as ck; from contrastive_kernels import dispatch;"
            "info = ck.backend_info();"
            "assert info['cuda']['emulated'] and info['cuda']['available'], info['cuda'];"
            "assert dispatch._auto_backend(torch.device('cpu')) == 'cpu';"
            "print(info['cuda']['reason'])")
    env = dict(os.environ, CONTRASTIVE_KERNELS_CUDA_EMULATE="1")
    env.pop("CONTRASTIVE_KERNELS_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "emulated" in res.stdout
