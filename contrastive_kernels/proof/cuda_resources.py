"""Static GPU proof for the CUDA C++ engine: read the built extension's cubins.

``python -m pytest tests/test_cuda_build.py`` and ``benchmarks/cuda_report.py`` use this to
check, without a GPU, that every kernel of ``contrastive_kernels._C_cuda`` was compiled for
sm_80 and sm_90, spills nothing to local memory (cuobjdump ``STACK``/``LOCAL`` = 0 and no
``STL``/``LDL`` in the SASS), and that the half-precision tile kernels contain tensor-core
``HMMA`` instructions. The tools are the ``cuobjdump`` that ships in the triton wheel.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
from dataclasses import dataclass

from .aot import _LOCAL_RE, _MMA_RE, _tool

ARCHES = (80, 90)
_FUNC_RE = re.compile(r"Function : (\S+)")
_RES_RE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
# Pairwise kernels first: "fwd_kernel"/"bwd_kernel" are substrings of their names.
_KERNEL_RE = re.compile(r"(pair_fwd_kernel|pair_bwd_kernel|hardest_kernel|sq_norm_kernel|"
                        r"inv_norm_kernel|norm_backward_kernel|fwd_kernel|merge_col_kernel|"
                        r"merge_rows_kernel|sum_splits_kernel|"
                        r"bwd_kernel)I(\w+?)(E|L)")
_TYPES = {"6__half": "float16", "13__nv_bfloat16": "bfloat16", "f": "float32", "d": "float64"}
_BWD_FLAGS_RE = re.compile(r"bwd_kernelI\w+?(Lb[01])E(Lb[01])E(Lb[01])E")
# pair_{fwd,bwd}_kernel<In, int KIND, [bool TRANSPOSED, bool ATOMIC_B]>
_PAIR_FLAGS_RE = re.compile(r"pair_(?:fwd|bwd)_kernelI\w+?Li(\d+)E(?:(Lb[01])E(Lb[01])E)?")
_PAIR_KINDS = {"0": "siglip", "1": "hadsell"}
TILE_KERNELS = ("fwd_kernel", "bwd_kernel", "pair_fwd_kernel", "pair_bwd_kernel",
                "hardest_kernel")


@dataclass
class CudaKernel:
    name: str       # readable: kernel[dtype, flags]
    arch: int
    registers: int
    shared: int
    stack: int
    local: int
    local_insts: int
    mma: int
    mma_kinds: str

    @property
    def is_tile_kernel(self) -> bool:
        return self.name.startswith(TILE_KERNELS)

    @property
    def dtype(self) -> str:
        return self.name.split("[")[1].split(",")[0].rstrip("]")


def extension_path() -> str | None:
    spec = importlib.util.find_spec("contrastive_kernels._C_cuda")
    return spec.origin if spec is not None else None


def _readable(mangled: str) -> str:
    m = _KERNEL_RE.search(mangled)
    if m is None:
        return mangled
    kernel, type_code = m.group(1), m.group(2)
    dtype = _TYPES.get(type_code, type_code)
    if kernel.startswith("pair_"):
        pf = _PAIR_FLAGS_RE.search(mangled)
        if pf is None:
            return f"{kernel}[{dtype}]"
        kind = _PAIR_KINDS.get(pf.group(1), pf.group(1))
        if kernel == "pair_fwd_kernel":
            return f"{kernel}[{dtype}, {kind}]"
        on = [n for n, f in zip(("transposed", "atomic_b"), pf.groups()[1:]) if f == "Lb1"]
        return f"{kernel}[{dtype}, {kind}, {'+'.join(on) or 'plain'}]"
    flags = _BWD_FLAGS_RE.search(mangled)
    if kernel == "bwd_kernel" and flags:
        names = ("transposed", "atomic_b", "has_col")
        on = [n for n, f in zip(names, flags.groups()) if f == "Lb1"]
        return f"{kernel}[{dtype}, {'+'.join(on) or 'plain'}]"
    return f"{kernel}[{dtype}]"


def _run(*args: str) -> str:
    return subprocess.run([_tool("cuobjdump"), *args], capture_output=True, text=True,
                          check=True).stdout


def _sass_by_function(path: str, arch: int) -> dict[str, str]:
    sass = _run("-sass", "-arch", f"sm_{arch}", path)
    parts = _FUNC_RE.split(sass)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def kernels(path: str | None = None) -> list[CudaKernel]:
    """Every kernel of the built extension, per arch, with its resources."""
    path = path or extension_path()
    if path is None:
        raise FileNotFoundError("contrastive_kernels._C_cuda is not built")
    out = []
    for arch in ARCHES:
        res = _run("-res-usage", "-arch", f"sm_{arch}", path)
        sass = _sass_by_function(path, arch)
        for name, regs, stack, shared, local in _RES_RE.findall(res):
            code = sass.get(name, "")
            kinds = sorted(set(_MMA_RE.findall(code)))
            out.append(CudaKernel(_readable(name), arch, int(regs), int(shared), int(stack),
                                  int(local), len(_LOCAL_RE.findall(code)),
                                  len(_MMA_RE.findall(code)), "+".join(kinds) or "-"))
    return out


def problems(found: list[CudaKernel]) -> list[str]:
    """Human-readable violations: missing arch, spills, half tile kernels without MMA."""
    bad = [f"no kernels for sm_{a}" for a in ARCHES if not any(k.arch == a for k in found)]
    for k in found:
        where = f"{k.name} sm_{k.arch}"
        if k.stack or k.local or k.local_insts:
            bad.append(f"{where}: local memory (stack {k.stack} B, local {k.local} B, "
                       f"{k.local_insts} STL/LDL)")
        if k.is_tile_kernel and k.dtype in ("float16", "bfloat16") and not k.mma:
            bad.append(f"{where}: half-precision tile kernel without tensor-core MMA")
    return bad
