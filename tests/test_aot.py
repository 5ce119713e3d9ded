"""Static GPU proof without a GPU: every Triton kernel variant the launcher can pick (the
softmax engine, the pairwise engine and the mining kernel) is compiled ahead of time for
sm_80 and sm_90; none may spill, and the half-precision tile products must run on tensor
cores (HMMA on sm_80; HMMA or HGMMA on sm_90)."""
import pytest
import torch

from contrastive_kernels.ops import aot
from contrastive_kernels.ops import triton_engine as te

pytestmark = pytest.mark.skipif(not aot.toolchain_available(),
                                reason="triton's bundled ptxas/cuobjdump are missing")


def test_representative_widths_cover_every_tile_class():
    """The variant list is complete: every D the launcher can see maps to a listed tile."""
    for dtype in aot.DTYPES:
        listed = set(aot._tile_configs(dtype))
        for d in list(range(1, 300)) + [511, 1024, 4096, 65536]:
            assert te.tile_config(d, dtype, interpret=False) in listed, (dtype, d)


def test_pairwise_variants_cover_every_launchable_flag_set():
    """Each tile class of each dtype lists the pairwise kernel for every KIND × MASK_DIAG ×
    pass (forward; one-pass and deterministic row pass with and without rows; column pass)
    × precision, and the mining kernel."""
    names = [v.name for v in aot.engine_variants()]
    assert len(names) == len(set(names))
    pair = [v for v in aot.engine_variants() if v.kernel == "_pair_kernel"]
    combos = {(v.dtype, v.constexprs["BLOCK_K"], v.constexprs["ONE_CHUNK"], v.constexprs["PREC"],
               v.constexprs["KIND"], v.constexprs["MASK_DIAG"], v.constexprs["GRAD"],
               v.constexprs["TRANSPOSED"], v.constexprs["ATOMIC_B"], v.constexprs["WANT_ROWS"])
              for v in pair}
    passes = aot.PAIR_FWD_PASSES + aot.PAIR_BWD_PASSES
    assert len(passes) == 6
    for dtype in aot.DTYPES:
        for fwd, bwd in aot._tile_configs(dtype):
            for prec in aot._precisions(dtype):
                for kind, _ in aot.PAIR_KINDS:
                    for mask in (False, True):
                        for p in passes:
                            cfg = bwd if p["GRAD"] else fwd
                            key = (dtype, cfg.block_k, cfg.one_chunk, prec, kind, mask,
                                   p["GRAD"], p["TRANSPOSED"], p["ATOMIC_B"], p["WANT_ROWS"])
                            assert key in combos, key
    assert any(v.kernel == "_hardest_kernel" for v in aot.engine_variants())
    for v in pair:
        assert v.constexprs["TILE_SCALE"] == (v.constexprs["KIND"] == 1
                                              and v.dtype == torch.float16)


def test_every_variant_compiles_without_spills_and_uses_tensor_cores():
    reports = aot.compile_all()
    bad = aot.problems(reports)
    assert not bad, "\n".join(bad[:50])
    half = [r for r in reports if r.is_mma and r.dtype in ("float16", "bfloat16")]
    assert half and all(r.mma_count > 0 for r in half)
    assert {r.arch for r in reports} == set(aot.ARCHES)
    # sm_80 has no wgmma: its tensor-core instruction is HMMA.
    assert all("HMMA" in r.mma_kinds for r in half if r.arch == 80)
