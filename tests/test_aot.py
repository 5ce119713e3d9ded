"""Static GPU proof without a GPU: every Triton kernel variant the launcher can pick (the
softmax engine, the pairwise engine and the mining kernel) is compiled ahead of time for
sm_80 and sm_90; none may spill, and the half-precision tile products must run on tensor
cores (HMMA on sm_80; HMMA or HGMMA on sm_90)."""
import pytest
import torch

from contrastive_kernels.proof import aot
from contrastive_kernels.backends.triton import softmax as te

pytestmark = pytest.mark.skipif(not aot.toolchain_available(),
                                reason="triton's bundled ptxas/cuobjdump are missing")


def test_representative_widths_cover_every_tile_class():
    """The variant list is complete: every D the launcher can see maps to a listed tile."""
    for dtype in aot.DTYPES:
        listed = set(aot._tile_configs(dtype))
        for d in list(range(1, 300)) + [511, 1024, 4096, 65536]:
            assert te.tile_config(d, dtype, interpret=False) in listed, (dtype, d)


def test_pairwise_widths_cover_every_pairwise_tile_class():
    from contrastive_kernels.backends.triton import pairwise as tp
    for dtype in aot.DTYPES:
        listed = set(aot.pair_tile_configs(dtype))
        for d in list(range(1, 300)) + [511, 1024, 4096, 65536]:
            assert tp.tile_config(d, dtype, interpret=False) in listed, (dtype, d)


def test_pairwise_variants_cover_every_launchable_flag_set():
    """Each pairwise tile class of each dtype lists the pairwise kernel for every KIND ×
    pass (forward; one-pass and deterministic row pass; column pass) × precision (mask_diag
    and want_rows are runtime arguments), and the mining kernel at the forward tiles."""
    names = [v.name for v in aot.engine_variants()]
    assert len(names) == len(set(names))
    variants = list(aot.engine_variants())
    pair = [v for v in variants if v.kernel == "_pair_kernel"]
    combos = {(v.dtype, v.constexprs["BLOCK_A"], v.constexprs["BLOCK_B"],
               v.constexprs["BLOCK_K"], v.constexprs["ONE_CHUNK"], v.num_warps,
               v.constexprs["PREC"], v.constexprs["KIND"], v.constexprs["GRAD"],
               v.constexprs["TRANSPOSED"], v.constexprs["ATOMIC_B"]) for v in pair}
    passes = aot.PAIR_FWD_PASSES + aot.PAIR_BWD_PASSES
    assert len(passes) == 4
    mining = {(v.dtype, v.constexprs["BLOCK_A"], v.constexprs["BLOCK_B"],
               v.constexprs["BLOCK_K"], v.num_warps, v.constexprs["PREC"])
              for v in variants if v.kernel == "_hardest_kernel"}
    for dtype in aot.DTYPES:
        for fwd, bwd in aot.pair_tile_configs(dtype):
            for prec in aot._precisions(dtype):
                assert (dtype, fwd.block_m, fwd.block_n, fwd.block_k, fwd.num_warps,
                        prec) in mining
                for kind, _ in aot.PAIR_KINDS:
                    for p in passes:
                        cfg = bwd if p["GRAD"] else fwd
                        key = (dtype, cfg.block_m, cfg.block_n, cfg.block_k, cfg.one_chunk,
                               cfg.num_warps, prec, kind, p["GRAD"], p["TRANSPOSED"],
                               p["ATOMIC_B"])
                        assert key in combos, key
    for v in pair:
        assert v.constexprs["TILE_SCALE"] == (v.constexprs["KIND"] == 1
                                              and v.dtype == torch.float16)


def _lse_variants():
    """One variant of each kernel with a running max, per accumulation dtype."""
    seen, out = set(), []
    for v in aot.engine_variants():
        key = (v.kernel, v.dtype in (torch.float64,))
        if v.kernel in aot.NAN_MAX_KERNELS and key not in seen:
            seen.add(key)
            out.append(v)
    return out


def test_running_maxima_propagate_nan_in_the_compiled_code():
    """On a GPU tl.maximum/tl.max compile to PTX max.f32, which returns the other operand
    for NaN (the interpreter's numpy maximum propagates it, so CPU tests cannot see this).
    The log-sum-exp kernels must compile to max.NaN.f32, or for fp64 to max.f64 with an
    explicit NaN test, and to no NaN-dropping max at all."""
    reports = aot.compile_all(variants=_lse_variants(), arches=(90,))
    assert len(reports) == 2 * len(aot.NAN_MAX_KERNELS)
    for r in reports:
        assert not isinstance(r, str), r
        assert r.nan_max > 0 and r.plain_max == 0, r


def test_the_ptx_max_check_can_fail():
    assert aot.ptx_max_counts("max.f32 %f1, %f2, %f3;") == (0, 1)
    assert aot.ptx_max_counts("max.NaN.f32 %f1, %f2, %f3;") == (1, 0)
    assert aot.ptx_max_counts("max.f64 %fd1, %fd2, %fd3;") == (0, 1)
    assert aot.ptx_max_counts("setp.nan.f64 %p1, %fd2, %fd3; max.f64 %fd1, %fd2, %fd3;") \
        == (1, 0)
    bad = aot.CompileReport("x", 90, 1, 0, 0, 0, 0, "float32", False, "-",
                            "_softmax_fwd_kernel", 3, 1)
    assert aot.problems([bad])


def test_every_variant_compiles_without_spills_and_uses_tensor_cores():
    reports = aot.compile_all()
    bad = aot.problems(reports)
    assert not bad, "\n".join(bad[:50])
    half = [r for r in reports if r.is_mma and r.dtype in ("float16", "bfloat16")]
    assert half and all(r.mma_count > 0 for r in half)
    assert {r.arch for r in reports} == set(aot.ARCHES)
    # sm_80 has no wgmma: its tensor-core instruction is HMMA.
    assert all("HMMA" in r.mma_kinds for r in half if r.arch == 80)
