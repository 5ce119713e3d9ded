"""The CUDA C++ engine without a GPU: it must be built wherever it can be (torch with CUDA,
nvcc present, not skipped), and its cubins must pass the static proof — compiled for sm_80
and sm_90, no spills, tensor-core MMA in the half-precision tile kernels."""
import os

import pytest
import torch

from contrastive_kernels import dispatch
from contrastive_kernels.proof import aot, cuda_resources


def _nvcc_present() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME
    return bool(CUDA_HOME) and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


CAN_BUILD = (bool(torch.version.cuda) and _nvcc_present()
             and os.environ.get("CONTRASTIVE_KERNELS_SKIP_CUDA") != "1")


@pytest.mark.skipif(not CAN_BUILD, reason="no CUDA toolkit here: the CUDA extension is "
                                          "legitimately absent")
def test_cuda_extension_is_built_where_it_can_be():
    built, why = dispatch._extension_status("cuda")
    assert built, why
    assert "8.0" in dispatch.cuda_archs() and "9.0" in dispatch.cuda_archs()


@pytest.mark.skipif(cuda_resources.extension_path() is None or not aot.toolchain_available(),
                    reason="the CUDA extension or cuobjdump is missing")
def test_cuda_kernels_have_no_spills_and_half_kernels_use_tensor_cores():
    found = cuda_resources.kernels()
    bad = cuda_resources.problems(found)
    assert not bad, "\n".join(bad)
    names = {k.name for k in found}
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert f"fwd_kernel[{dtype}]" in names
        for flags in ("plain", "atomic_b", "transposed", "has_col", "atomic_b+has_col",
                      "transposed+has_col"):
            assert f"bwd_kernel[{dtype}, {flags}]" in names, (dtype, flags)
        # The pairwise engine: both kinds, forward and the three backward variants
        # (one-pass with atomics; the deterministic row and column passes), and mining.
        for kind in ("siglip", "hadsell"):
            assert f"pair_fwd_kernel[{dtype}, {kind}]" in names, (dtype, kind)
            for flags in ("plain", "atomic_b", "transposed"):
                assert f"pair_bwd_kernel[{dtype}, {kind}, {flags}]" in names, (dtype, kind, flags)
        assert f"hardest_kernel[{dtype}]" in names
        assert f"sq_norm_kernel[{dtype}]" in names
    for arch in cuda_resources.ARCHES:
        assert sum(k.name.startswith("pair_") and k.arch == arch for k in found) == 4 * 8, arch
    assert all("HMMA" in k.mma_kinds for k in found
               if k.is_tile_kernel and k.dtype in ("float16", "bfloat16"))


def test_cuda_backend_reports_itself_honestly():
    info = dispatch.backend_info()["cuda"]
    if not torch.cuda.is_available():
        assert not info["available"] and info["reason"]
    if info["built"]:
        assert info["archs"]
