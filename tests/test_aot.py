"""Static GPU proof without a GPU: every Triton kernel variant the launcher can pick is
compiled ahead of time for sm_80 and sm_90; none may spill, and the half-precision tile
products must run on tensor cores (HMMA on sm_80; HMMA or HGMMA on sm_90)."""
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


def test_every_variant_compiles_without_spills_and_uses_tensor_cores():
    reports = aot.compile_all()
    bad = aot.problems(reports)
    assert not bad, "\n".join(bad[:50])
    half = [r for r in reports if r.is_mma and r.dtype in ("float16", "bfloat16")]
    assert half and all(r.mma_count > 0 for r in half)
    assert {r.arch for r in reports} == set(aot.ARCHES)
    # sm_80 has no wgmma: its tensor-core instruction is HMMA.
    assert all("HMMA" in r.mma_kinds for r in half if r.arch == 80)
