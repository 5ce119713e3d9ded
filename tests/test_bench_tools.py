"""The benchmark tooling: pytest-benchmark JSON -> plots and table (benchmarks/plot.py), and
the dtype filter of benchmarks/tile_search.py --check, the tile swap of
benchmarks/tile_sweep.py."""
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
    assert "| loss | mode | N | D | dtype | torch | cpu |" in text
    assert "| clip_loss | fwd_bwd | 4096 | 64 | float32 | 16.4 ms · 64 MiB (1.00x) | " \
           "4.1 ms · 64 MiB (4.00x) |" in text


def test_plot_marks_peers_whose_semantics_differ(tmp_path):
    import plot
    rows = [{"loss": "contrastive_loss", "provider": p, "n": 64, "d": 8, "dtype": "float32",
             "mode": "fwd", "device": "cpu", "peak_bytes": 0, "seconds": 1e-3}
            for p in ("torch", "pml")]
    text = plot.table({}, rows)
    assert "(1.00x) † |" in text and "† pml on contrastive_loss: differs" in text


def test_table_reports_a_provider_that_ran_out_of_memory(tmp_path):
    import plot
    rows = [{"loss": "nt_xent_loss", "provider": "torch", "n": 4096, "d": 8,
             "dtype": "float32", "mode": "fwd", "device": "cpu", "peak_bytes": 2**20,
             "seconds": 1e-3},
            {"loss": "nt_xent_loss", "provider": "pml", "n": 4096, "d": 8, "dtype": "float32",
             "mode": "fwd", "device": "cpu", "seconds": 0.0,
             "error": "out of memory (asked for 64 GiB)"}]
    text = plot.table({}, rows)
    assert "| 1.0 ms · 1 MiB (1.00x) | out of memory (asked for 64 GiB) |" in text
    assert [p.name for p in plot.plot(rows, tmp_path)] == ["nt_xent_loss_fwd.png"]


def test_tile_search_check_compiles_only_the_dtype_asked_for(monkeypatch):
    """--check fp32 must retile fp32-operand binaries only: half kernels also take fp32
    pointers (gradients, statistics), and checking them instead (as it once did) reported
    tensor-core tiles as clean for fp32 and hid its spills."""
    import types
    import tile_search
    from contrastive_kernels.proof import aot

    def spec(operand, prec):
        return types.SimpleNamespace(
            name="_softmax_bwd_kernel", divisible_by_16=("D",),
            signature={"A": operand, "B": operand, "DA": "*fp32", "LSE": "*fp32"},
            named_constexprs={"PREC": prec, "BLOCK_M": 16, "ONE_CHUNK": True})

    specs = [spec("*fp16", "ieee"), spec("*fp32", "ieee"), spec("*fp32", "tf32"),
             spec("*bf16", "tf32")]
    compiled = []
    monkeypatch.setattr(aot, "engine_variants", lambda arches: specs)
    monkeypatch.setattr(aot, "retile", lambda s, cfg: s)
    monkeypatch.setattr(aot, "compile_variant", lambda s: compiled.append(s) or
                        types.SimpleNamespace(registers=64, spill_bytes=0, local_insts=0,
                                              mma_kinds="-"))
    assert tile_search.check("_softmax_bwd_kernel", "fp32", 90, ["64x64x16w8"])
    assert [s.signature["A"] for s in compiled] == ["*fp32", "*fp32"]
    assert sorted(s.named_constexprs["PREC"] for s in compiled) == ["ieee", "tf32"]


def test_the_tile_sweep_swaps_the_class_for_both_half_types_and_restores_it():
    """bf16 has its own sm_90 aligned rows: a sweep candidate must replace those too (it
    times bf16), only at its width, and the table must come back afterwards."""
    import torch
    import tile_sweep
    from contrastive_kernels.backends.triton import softmax as te
    before = {(dt, d): te.tile_config(d, dt, arch=90, aligned=True)
              for dt in (torch.bfloat16, torch.float16) for d in (64, 256)}
    fwd, bwd = (64, 64, None, 4, 2), (32, 16, None, 4, 1)
    with tile_sweep.tiles(256, fwd, bwd):
        for dt in (torch.bfloat16, torch.float16):
            f, b = te.tile_config(256, dt, arch=90, aligned=True)
            assert (f.block_m, f.block_n, f.num_warps) == (64, 64, 4), dt
            assert (b.block_m, b.block_n, b.num_stages) == (32, 16, 1), dt
            assert te.tile_config(64, dt, arch=90, aligned=True) == before[(dt, 64)]
    assert {k: te.tile_config(k[1], k[0], arch=90, aligned=True) for k in before} == before
