"""The benchmark tooling: pytest-benchmark JSON -> plots and table (benchmarks/plot.py)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_plot_turns_benchmark_json_into_pngs_and_a_table(tmp_path):
    import plot
    records = []
    for provider, scale in (("torch", 4.0), ("cpu", 1.0)):
        for n in (1024, 4096):
            records.append({"stats": {"median": scale * n * 1e-6},
                            "extra_info": {"loss": "clip_loss", "provider": provider, "n": n,
                                           "d": 64, "dtype": "float32", "mode": "fwd_bwd",
                                           "device": "cpu", "peak_bytes": n * n * 4}})
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": {"node": "test"}, "benchmarks": records}))
    pngs = plot.main([str(path), "--out", str(tmp_path / "plots")])
    assert [p.name for p in pngs] == ["clip_loss_fwd_bwd.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    machine, rows = plot.load(path)
    text = plot.table(machine, rows)
    assert "| clip_loss | fwd_bwd | 4096 |" in text and "4.00x" in text
