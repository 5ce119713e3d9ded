"""Static GPU proof without a GPU: every Triton binary the launchers can run (the softmax
engine, the pairwise engine, the mining and strip kernels and the row kernels),
specialized exactly as a run-time launch specializes it (proof/catalogue.py,
proof/specialize.py), is compiled ahead of time for sm_80 and sm_90; none may spill, the
half-precision tile products must run on tensor cores (HMMA on sm_80; HMMA or HGMMA on
sm_90), and the committed resource table (benchmarks/aot_resources.json, RESULTS.md) must
describe exactly these binaries."""
import dataclasses
import itertools
import json
import pathlib

import pytest
import torch

from contrastive_kernels.backends.triton import pairwise as tp, softmax as te
from contrastive_kernels.proof import aot, catalogue
from contrastive_kernels.proof import specialize as sp

pytestmark = pytest.mark.skipif(not aot.toolchain_available(),
                                reason="triton's bundled ptxas/cuobjdump are missing")
RESOURCES = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "aot_resources.json"
# Binaries that spill today (found when the proof switched to the run-time specialization:
# the hand-written signatures had hidden them). Listed with the reason in the file; the
# test fails on any new one and on any listed one that no longer spills.
KNOWN_SPILLS = RESOURCES.with_name("aot_known_spills.json")
PUBLIC = "contrastive_kernels.proof.catalogue:run_public_losses"


@pytest.fixture(scope="module")
def launches():
    return {arch: catalogue.record(arch) for arch in aot.ARCHES}


@pytest.fixture(scope="module")
def variants(launches):
    return aot.engine_variants(launches=launches)


@pytest.fixture(scope="module")
def reports(variants):
    """The heaviest binary of each kernel × dtype × arch, compiled here; the rest are in
    the committed table, which the table test ties to these exact binaries."""
    return aot.compile_all(variants=aot.sample(variants))


@pytest.fixture(scope="module")
def table():
    """The committed per-binary resource table (benchmarks/aot_report.py)."""
    return {(r["src_hash"], r["arch"]): r for r in json.loads(RESOURCES.read_text())}


@pytest.mark.parametrize("arch", aot.ARCHES)
def test_public_losses_launch_only_catalogued_binaries(arch, variants):
    """Every public loss at odd shapes, widths and dtypes, recorded as a GPU of ``arch``
    would launch it, hits a binary the AOT proof compiles."""
    catalogued = {v.key for v in variants}
    used = catalogue.specs(arch, catalogue.record(arch, PUBLIC))
    missing = [aot.variant_name(s) for s in used if s.key not in catalogued]
    assert used and not missing, missing


def test_a_binary_outside_the_catalogue_is_noticed(launches, variants):
    """The coverage check can fail: a launch at a tile no table lists is a binary nobody
    compiled."""
    launch = next(x for x in launches[90] if x.name == "_softmax_fwd_kernel")
    moved = dataclasses.replace(launch, args={**launch.args, "BLOCK_M": 256})
    assert sp.runtime_specialization(launch, launch_target(90)).key in \
        {v.key for v in variants}
    assert sp.runtime_specialization(moved, launch_target(90)).key not in \
        {v.key for v in variants}


def launch_target(arch):
    return aot.GPUTarget("cuda", arch, 32)


@pytest.mark.parametrize("arch", aot.ARCHES)
def test_every_width_maps_to_a_catalogued_tile(arch, variants):
    """The catalogue's widths reach every tile class: any D, aligned or not, gets forward
    tiles that some compiled forward binary has."""
    tiles = {(v.signature["Q"], v.named_constexprs["BLOCK_M"], v.named_constexprs["BLOCK_N"],
              v.named_constexprs["BLOCK_K"], v.options["num_warps"])
             for v in variants if v.name == "_softmax_fwd_kernel" and v.target.arch == arch}
    for dtype in aot.DTYPES:
        for d in list(range(1, 300)) + [511, 1024, 4096, 65536]:
            for aligned in {False, d % 16 == 0}:
                cfg = te.tile_config(d, dtype, arch=arch, aligned=aligned)[0]
                assert (aot.POINTER_TYPE[dtype], cfg.block_m, cfg.block_n, cfg.block_k,
                        cfg.num_warps) in tiles, (dtype, d, aligned)


def test_every_extra_lse_override_names_a_table_tile():
    """Each entry of the launch overrides (softmax._EXTRA_LSE_TILES, _CAPPED_TILES)
    names tiles the table gives some width and dtype of its arch and pass: a retuned
    table cannot leave a stale entry behind while its new tiles go unchecked."""
    given = set()
    for arch in aot.ARCHES:
        for dtype in aot.DTYPES:
            for d in list(range(1, 300)) + [4096]:
                for aligned in {False, d % 16 == 0}:
                    for name, cfg in zip(("fwd", "bwd"),
                                         te.tile_config(d, dtype, arch=arch, aligned=aligned)):
                        for c in (cfg, te._fit(cfg, 1)):
                            given.add((arch, name, tp.dtype_class(dtype), c.block_m,
                                       c.block_n, c.block_k))
    stale = [key for key in [*te._EXTRA_LSE_TILES, *te._CAPPED_TILES] if key[:6] not in given]
    assert not stale, stale


@pytest.mark.parametrize("arch", aot.ARCHES)
def test_every_width_maps_to_a_catalogued_pairwise_tile(arch, variants):
    """The same for the pairwise kernel's forward and backward tiles."""
    tiles = {(v.signature["A"], v.named_constexprs["GRAD"], v.named_constexprs["BLOCK_A"],
              v.named_constexprs["BLOCK_B"], v.named_constexprs["BLOCK_K"],
              v.options["num_warps"])
             for v in variants if v.name == "_pair_kernel" and v.target.arch == arch}
    for dtype in aot.DTYPES:
        for d in list(range(1, 300)) + [511, 1024, 4096, 65536]:
            for aligned, kind in itertools.product({False, d % 16 == 0},
                                                   (tp.SIGLIP, tp.HADSELL)):
                # As the launcher (tp._tiles_for): fp16 Hadsell never takes aligned tiles.
                aligned = aligned and not tp.tile_scale(kind, dtype)
                cfgs = tp.tile_config(d, dtype, interpret=False, arch=arch, aligned=aligned,
                                      kind=kind)
                for grad, cfg in zip((False, True), cfgs):
                    assert (aot.POINTER_TYPE[dtype], grad, cfg.block_m, cfg.block_n,
                            cfg.block_k, cfg.num_warps) in tiles, (dtype, d, aligned, kind,
                                                                   grad)


def test_running_maxima_propagate_nan_in_the_compiled_code(reports, table):
    """On a GPU tl.maximum/tl.max compile to PTX max.f32, which returns the other operand
    for NaN (the interpreter's numpy maximum propagates it, so CPU tests cannot see this).
    The log-sum-exp kernels must compile to max.NaN.f32, or for fp64 to max.f64 with an
    explicit NaN test, and to no NaN-dropping max at all: in every binary of the table and
    in the ones compiled here."""
    lse = [r for r in reports if not isinstance(r, str) and r.kernel in aot.NAN_MAX_KERNELS]
    assert {r.kernel for r in lse} == set(aot.NAN_MAX_KERNELS)
    for r in lse:
        assert r.nan_max > 0 and r.plain_max == 0, r
    for r in table.values():
        if r["kernel"] in aot.NAN_MAX_KERNELS:
            assert r["nan_max"] > 0 and r["plain_max"] == 0, r["name"]


def test_the_ptx_max_check_can_fail():
    assert aot.ptx_max_counts("max.f32 %f1, %f2, %f3;") == (0, 1)
    assert aot.ptx_max_counts("max.NaN.f32 %f1, %f2, %f3;") == (1, 0)
    assert aot.ptx_max_counts("max.f64 %fd1, %fd2, %fd3;") == (0, 1)
    assert aot.ptx_max_counts("setp.nan.f64 %p1, %fd2, %fd3; max.f64 %fd1, %fd2, %fd3;") \
        == (1, 0)
    bad = aot.CompileReport("x", 90, 1, 0, 0, 0, 0, "float32", False, "-",
                            "_softmax_fwd_kernel", 3, 1)
    assert aot.problems([bad])


def test_the_heaviest_binaries_compile_without_spills_and_use_tensor_cores(reports):
    known = set(json.loads(KNOWN_SPILLS.read_text())["binaries"])
    bad = [p for p in aot.problems(reports) if p.split(":")[0] not in known]
    assert not bad, "\n".join(bad[:50])
    half = [r for r in reports if r.is_mma and r.dtype in ("float16", "bfloat16")]
    assert half and all(r.mma_count > 0 for r in half)
    assert {r.arch for r in reports} == set(aot.ARCHES)
    # sm_80 has no wgmma: its tensor-core instruction is HMMA.
    assert all("HMMA" in r.mma_kinds for r in half if r.arch == 80)


def test_the_committed_table_covers_every_binary_and_spills_only_where_known(variants,
                                                                            table):
    """benchmarks/aot_report.py compiled every binary of the catalogue: a kernel or a
    launcher edited without regenerating the table (python benchmarks/aot_report.py)
    fails here, and the table holds no spill, no half tile product without tensor cores
    and no NaN-dropping max beyond the listed, still-open ones
    (benchmarks/aot_known_spills.json)."""
    hashes = aot.binary_hashes(variants)
    stale = [aot.variant_name(v) for v, h in zip(variants, hashes)
             if (h, v.target.arch) not in table]
    assert not stale, f"{len(stale)} binaries missing from aot_resources.json: {stale[:5]}"
    records = [aot.CompileReport(**r) for r in table.values()]
    found = {p.split(":")[0] for p in aot.problems(records)}
    known = set(json.loads(KNOWN_SPILLS.read_text())["binaries"])
    assert not found - known, f"new problems: {sorted(found - known)[:10]}"
    # A ratchet, not a waiver: a fixed binary must leave the list.
    assert not known - found, f"no longer spilling, remove: {sorted(known - found)[:10]}"


def test_the_listed_spills_are_cold(table):
    """Every binary still listed in aot_known_spills.json keeps its local memory out of
    the loops: a store before them and a load after, per thread, whatever the problem
    size (the committed table's loop_local_insts, read from the SASS)."""
    known = set(json.loads(KNOWN_SPILLS.read_text())["binaries"])
    listed = [r for r in table.values() if f"{r['name']} sm_{r['arch']}" in known]
    assert len(listed) == len(known)
    for r in listed:
        assert r["loop_local_insts"] == 0, f"{r['name']} sm_{r['arch']} spills in a loop"


def test_the_loop_spill_check_can_fail():
    """A load inside a loop (between a backward branch's target and the branch) counts; a
    store before the loop and a load after it do not."""
    sass = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R8 ;
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0030*/                   LDL R4, [R1] ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   LDL.LU R5, [R1] ;
        /*0060*/                   EXIT ;
    """
    assert aot.loop_local_insts(sass) == 1
    assert aot.loop_local_insts(sass.replace("LDL R4", "MOV R4")) == 0


def test_the_committed_table_is_what_the_compiler_says(reports, table):
    """The recompiled sample matches the committed table exactly (registers, shared
    memory, spills), so the table is a record of compiles, not a claim."""
    for r in reports:
        committed = table[(r.src_hash, r.arch)]
        assert (committed["registers"], committed["shared_bytes"], committed["spill_bytes"],
                committed["loop_local_insts"]) \
            == (r.registers, r.shared_bytes, r.spill_bytes, r.loop_local_insts), r.name


def test_a_hand_signature_that_diverges_from_the_launch_is_named(variants):
    """What the previous hand-written AOT signatures got wrong is detected: i64 strides
    and missing divisibility hints."""
    spec = next(v for v in variants if v.name == "_softmax_bwd_kernel"
                and {"D", "stride_a"} <= v.divisible_by_16)
    hand = dict(spec.signature, stride_a="i64")
    assert sp.diverges(spec.signature, spec.named_attrs, spec, spec.named_constexprs) == []
    found = sp.diverges(hand, {}, spec, spec.named_constexprs)
    assert any("stride_a" in f and "i64" in f for f in found)
    assert any(f.startswith("D:") and "divisibility" in f for f in found)
