"""setup.py never fails for lack of CUDA: without nvcc (or with the skip flag) it says why
and plans the CPU extension alone. Run on a copy of setup.py, so the real build's
_build_info.py is untouched; ``--version`` plans the build without compiling."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _plan(tmp_path, **env):
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "contrastive_kernels").mkdir()
    import os
    run = subprocess.run([sys.executable, "setup.py", "--version"], cwd=tmp_path,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    info = {}
    exec((tmp_path / "contrastive_kernels" / "_build_info.py").read_text(), info)
    return run.stderr, info


@pytest.mark.parametrize("env,reason", [
    ({"CUDA_HOME": "/nonexistent-cuda"}, "nvcc not found"),
    ({"CONTRASTIVE_KERNELS_SKIP_CUDA": "1"}, "CONTRASTIVE_KERNELS_SKIP_CUDA=1"),
])
def test_no_cuda_means_cpu_build_and_a_clear_message(tmp_path, env, reason):
    import torch
    stderr, info = _plan(tmp_path, **env)
    assert info["CPU_BUILT"] is True and info["CUDA_BUILT"] is False
    if torch.version.cuda or "SKIP" in reason:
        assert reason in info["CUDA_REASON"]
        assert "not building the CUDA extension" in stderr
