"""The examples run as documented (CPU, gloo)."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("mode", ["gather", "ring"])
def test_ddp_clip_step_runs_under_torchrun(mode):
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "examples", "ddp_clip_step.py"), "--steps", "2",
         "--batch-per-rank", "64", "--dist-mode", mode],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.stdout.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 2 and all(x == x for x in losses)


def test_simclr_digits_learns_and_matches_the_reference_curve():
    # scikit-learn comes with the README's test install (".[test]")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import simclr_digits
    before, after, fused = simclr_digits.main(["--epochs", "30"])
    assert after > before + 0.1, (before, after)
    _, _, ref = simclr_digits.main(["--epochs", "5", "--backend", "torch"])
    for a, b in zip(fused[:5], ref):
        assert abs(a - b) < 1e-3 * abs(b), (fused[:5], ref)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_clip_synthetic_learns_retrieval(loss):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import clip_synthetic
    before, after = clip_synthetic.main(["--loss", loss, "--steps", "150"])
    assert before < 0.1 and after > 0.8, (before, after)


def test_sentence_transformers_cached_fits_where_theirs_does_not():
    """sentence-transformers' trainer at a batch of 2048 pairs under a 300 MB budget:
    its uncached MNRL runs out of memory, our cached MNRL trains (loss falls) within it."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("datasets")
    script = os.path.join(ROOT, "examples", "sentence_transformers_cached.py")
    rows = {}
    for loss in ("st", "ours_cached"):
        out = subprocess.run([sys.executable, script, "--loss", loss, "--batch", "2048",
                              "--steps", "2", "--budget-mb", "300", "--result-json"],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = [x for x in out.stdout.splitlines() if x.startswith('{"loss"')]
        assert out.returncode == 0 and lines, out.stderr[-3000:]
        rows[loss] = __import__("json").loads(lines[-1])
    assert rows["st"]["oom"], rows["st"]
    ours = rows["ours_cached"]
    assert not ours["oom"] and ours["peak_extra_mb"] < 300, ours
    assert ours["losses"][-1] < ours["losses"][0]
