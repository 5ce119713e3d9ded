"""The command-line entry: `python -m contrastive_kernels {info,check,bench}`."""
import subprocess
import sys


def _run(*args):
    out = subprocess.run([sys.executable, "-m", "contrastive_kernels", *args],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_info_is_a_readable_table_and_json_on_request():
    text = _run("info")
    assert "backend" in text and "cpu" in text and "runs here" in text
    assert '"torch"' in _run("info", "--json")


def test_bench_prints_every_loss_with_times_and_memory():
    text = _run("bench", "--n", "64", "--d", "8", "--repeats", "1")
    for loss in ("clip_loss", "siglip_loss", "triplet_margin_loss", "supcon_loss"):
        assert loss in text
    assert "torch ms" in text and "MiB" in text


def test_check_passes_at_a_small_size():
    assert "0 failed" in _run("check", "--n", "64", "--d", "8")
