"""Ahead-of-time compilation of every Triton kernel binary the launchers can run.

No GPU is needed: ``triton.compile`` lowers each binary to PTX and cubin for a target
compute capability, and the cubin is read with the ``cuobjdump``/``nvdisasm`` that ship in
the triton wheel. This keeps the GPU path honest on machines without a GPU, since the
interpreter accepts kernels that the GPU compiler rejects.

What is compiled is what runs: the binaries come from ``catalogue.py``, which records
every launch path of every engine under the interpreter with a GPU's launch
(``CONTRASTIVE_KERNELS_LAUNCH_AS``) and specializes each launch with Triton's own run-time
rule (argument types, divisibility-16 hints, constant 1s; ``specialize.py``), not from
hand-written signatures.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget

from . import catalogue, specialize
from ..backends.triton.tiles import TileConfig

ARCHES = (80, 90)
DTYPES = catalogue.DTYPES
# Kernels whose binaries contain tile products (tensor cores for half inputs).
MMA_KERNELS = ("_softmax_fwd_kernel", "_softmax_bwd_kernel", "_pair_kernel",
               "_hardest_kernel")
# Triton's pointer type of each input dtype, the one map from signature to dtype that the
# proof tooling and its tests share.
POINTER_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                torch.float64: "*fp64"}
_TORCH_DTYPE = {ptr: str(dtype).removeprefix("torch.") for dtype, ptr in POINTER_TYPE.items()}
_SHORT = {"BLOCK_M": "m", "BLOCK_N": "n", "BLOCK_A": "m", "BLOCK_B": "n", "BLOCK_K": "k"}


def engine_variants(arches=ARCHES, launches: dict | None = None
                    ) -> list[specialize.RuntimeSpec]:
    """One run-time spec per distinct binary of every launch path, for each arch
    (``launches``: arch -> recorded catalogue launches, recorded here when None)."""
    out = []
    for arch in arches:
        out += catalogue.specs(arch, None if launches is None else launches[arch])
    return out


def variant_name(spec: specialize.RuntimeSpec) -> str:
    """A readable name of a binary: kernel, input dtype, tiles, flags, warps, hints."""
    ce = spec.named_constexprs
    dtype = next((t[1:] for t in spec.signature.values() if t in _TORCH_DTYPE), "-")
    parts = [spec.name.lstrip("_").removesuffix("_kernel"), dtype]
    tiles = "x".join(str(ce[k]) for k in ("BLOCK_M", "BLOCK_A", "BLOCK_N", "BLOCK_B")
                     if k in ce)
    if tiles:
        parts.append(tiles + (f"k{ce['BLOCK_K']}" if "BLOCK_K" in ce else "")
                     + ("" if ce.get("ONE_CHUNK", True) else "c"))
    flags = [k for k, v in ce.items() if v is True and k not in ("ONE_CHUNK",)]
    flags += [f"{k}={v}" for k, v in ce.items()
              if k in ("PREC", "KIND", "BLOCK_R", "BLOCK_D", "BLOCK", "D") or
              (k == "N_XLSE" and v) or (not isinstance(v, bool) and k[0].islower())]
    hinted = sorted(n for n in spec.divisible_by_16 if not spec.signature[n].startswith("*"))
    parts += flags + [f"w{spec.options.get('num_warps')}s{spec.options.get('num_stages')}"]
    if hinted:
        parts.append("16|" + ",".join(hinted))
    return " ".join(parts)


def retile(spec: specialize.RuntimeSpec, cfg: TileConfig) -> specialize.RuntimeSpec:
    """The same binary at other tiles (benchmarks/tile_search.py's candidates)."""
    names = list(spec.signature)
    values = {"BLOCK_M": cfg.block_m, "BLOCK_A": cfg.block_m, "BLOCK_N": cfg.block_n,
              "BLOCK_B": cfg.block_n, "BLOCK_K": cfg.block_k, "ONE_CHUNK": cfg.one_chunk}
    constexprs = {p: values.get(names[p[0]], v) for p, v in spec.constexprs.items()}
    options = dict(spec.options, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dataclasses.replace(spec, constexprs=constexprs, options=options,
                               key=f"{spec.key}|{cfg}")


@dataclass
class CompileReport:
    name: str
    arch: int
    registers: int
    shared_bytes: int
    spill_bytes: int   # per-thread stack + local memory (0 when nothing spills)
    local_insts: int   # STL/LDL instructions in the SASS
    mma_count: int
    dtype: str
    is_mma: bool
    mma_kinds: str = "-"   # which tensor-core instructions appear (HMMA, HGMMA, DMMA)
    kernel: str = ""       # the kernel function the variant instantiates
    nan_max: int = 0       # PTX max instructions that propagate NaN (see _ptx_max_counts)
    plain_max: int = 0     # PTX max instructions that return the other operand for NaN
    src_hash: str = ""     # triton's hash of the compiled source + specialization
    loop_local_insts: int = 0  # STL/LDL inside a loop body (a spill on the hot path)


# Kernels whose running maxima decide a log-sum-exp: a NaN logit must reach the result.
NAN_MAX_KERNELS = ("_softmax_fwd_kernel", "_merge_kernel", "_inv_norm_kernel")

_MAX_NAN_RE = re.compile(r"\bmax\.NaN\.(?:f32|f16|bf16|f16x2|bf16x2)\b")
_MAX_F32_RE = re.compile(r"\bmax(?:\.ftz)?\.f32\b")
_MAX_F64_RE = re.compile(r"\bmax\.f64\b")
_NAN_TEST_F64_RE = re.compile(r"\bsetp\.nan\.f64\b")


def ptx_max_counts(ptx: str) -> tuple[int, int]:
    """(NaN-propagating, NaN-dropping) float max instructions of a PTX listing. PTX
    ``max.f32``/``max.f64`` return the non-NaN operand; ``max.NaN.f32`` propagates NaN; PTX
    has no ``max.NaN.f64``, so a propagating fp64 max is ``max.f64`` plus an explicit NaN
    test (``setp.nan.f64``) selecting the NaN: each ``max.f64`` without such a test counts
    as dropping."""
    f64 = len(_MAX_F64_RE.findall(ptx))
    nan_tests = len(_NAN_TEST_F64_RE.findall(ptx))
    propagating = len(_MAX_NAN_RE.findall(ptx)) + min(f64, nan_tests)
    return propagating, len(_MAX_F32_RE.findall(ptx)) + max(0, f64 - nan_tests)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_MMA_RE = re.compile(r"\b(HMMA|HGMMA|DMMA|IMMA)\b")


_LOCAL_RE = re.compile(r"\b(STL|LDL)(\.[A-Z0-9.]+)?\b")
_SASS_INST_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BRANCH_RE = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def loop_local_insts(sass: str) -> int:
    """Local-memory instructions (STL/LDL) inside a loop of any function of ``sass``: at
    or after the target of a backward branch and at or before that branch. Zero means
    every spill is cold: stored before the loops and reloaded after them, a fixed number
    of accesses per thread whatever the problem size."""
    count = 0
    for body in re.split(r"\bFunction : ", sass)[1:]:
        insts = [(int(addr, 16), text) for addr, text in _SASS_INST_RE.findall(body)]
        loops = [(int(m.group(1), 16), addr) for addr, text in insts
                 for m in [_BRANCH_RE.search(text)] if m and m.group(1)
                 and int(m.group(1), 16) <= addr]
        count += sum(1 for addr, text in insts if _LOCAL_RE.search(text)
                     and any(start <= addr <= end for start, end in loops))
    return count


def _cubin_stats(cubin: bytes) -> dict:
    """Registers, stack/local bytes, local-memory and tensor-core instruction counts."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(path)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    if usage is None:
        raise RuntimeError(f"cannot read cuobjdump -res-usage output: {res!r}")
    regs, stack, _, local = (int(g) for g in usage.groups())
    kinds = sorted(set(_MMA_RE.findall(sass)))
    return dict(registers=regs, stack=stack, local=local,
                local_insts=len(_LOCAL_RE.findall(sass)), mma=len(_MMA_RE.findall(sass)),
                mma_kinds="+".join(kinds) or "-", loop_local=loop_local_insts(sass))


def compile_variant(spec: specialize.RuntimeSpec, arch: int | None = None
                    ) -> "CompileReport":
    """Compile one run-time spec (for its own target) and read its resource usage."""
    src, options = specialize.compile_spec(spec)
    compiled = triton.compile(src, target=spec.target, options=options)
    st = _cubin_stats(compiled.asm["cubin"])
    nan_max, plain_max = ptx_max_counts(compiled.asm["ptx"])
    dtype = next((t for t in spec.signature.values() if t in _TORCH_DTYPE), None)
    return CompileReport(variant_name(spec), spec.target.arch, st["registers"],
                         compiled.metadata.shared, st["stack"] + st["local"],
                         st["local_insts"], st["mma"], _TORCH_DTYPE.get(dtype, "-"),
                         spec.name in MMA_KERNELS, st["mma_kinds"], spec.name, nan_max,
                         plain_max, _binary_hash(src, options), st["loop_local"])


def _binary_hash(src, options: dict) -> str:
    """Identity of a compiled binary: Triton's source hash (kernel source and its jit
    dependencies, signature, constexprs, hints) plus the launch options."""
    import hashlib
    opts = ",".join(f"{k}={options[k]}" for k in sorted(options))
    return hashlib.sha256(f"{src.hash()}|{opts}".encode()).hexdigest()


def _hash_job(spec) -> str:
    return _binary_hash(*specialize.compile_spec(spec))


def binary_hashes(specs) -> list[str]:
    """The binary identity of each spec, as compile_variant records it, without
    compiling (fresh processes: the kernels must be JITFunctions)."""
    return specialize.in_fresh_processes(_hash_job, list(specs))


def sample(specs) -> list:
    """The heaviest binary of each kernel × input dtype × arch (largest tile, most
    constexpr flags on): the ones that spill first, recompiled by the tests to prove the
    committed table honest."""
    best = {}
    for spec in specs:
        ce = spec.named_constexprs
        dtype = next((t for t in spec.signature.values() if t in _TORCH_DTYPE), None)
        weight = (ce.get("BLOCK_M", ce.get("BLOCK_A", 1)) * ce.get("BLOCK_N", ce.get(
            "BLOCK_B", 1)) * ce.get("BLOCK_K", 1), sum(v is True for v in ce.values()))
        key = (spec.name, dtype, spec.target.arch)
        if key not in best or weight > best[key][0]:
            best[key] = (weight, spec)
    return [spec for _, spec in best.values()]




def _compile_job(spec) -> "CompileReport | str":
    try:
        return compile_variant(spec)
    except Exception as exc:  # reported per variant, so one failure names itself
        return f"{variant_name(spec)} sm_{spec.target.arch}: {type(exc).__name__}: {exc}"


def compile_all(workers: int | None = None, arches=ARCHES,
                variants=None) -> list["CompileReport | str"]:
    """Compile every binary of the launchers (or the given run-time specs) in fresh
    processes; a str entry is a compile failure."""
    variants = engine_variants(arches) if variants is None else list(variants)
    variants = [v for v in variants if v.target.arch in arches]
    return specialize.in_fresh_processes(_compile_job, variants, workers)


def problems(reports: list[CompileReport | str]) -> list[str]:
    """Every violation of the GPU-path contract: a failed compile, a spill, a
    half-precision tile product without tensor-core instructions, or a log-sum-exp's
    running max that can drop a NaN."""
    out = []
    for r in reports:
        if isinstance(r, str):
            out.append(r)
            continue
        if r.spill_bytes or r.local_insts:
            out.append(f"{r.name} sm_{r.arch}: spills ({r.spill_bytes} B stack/local, "
                       f"{r.local_insts} STL/LDL)")
        if r.is_mma and r.dtype in ("float16", "bfloat16") and r.mma_count == 0:
            out.append(f"{r.name} sm_{r.arch}: no tensor-core (HMMA/HGMMA) instruction")
        if r.kernel in NAN_MAX_KERNELS and (r.plain_max or not r.nan_max):
            out.append(f"{r.name} sm_{r.arch}: a running max can drop NaN ({r.plain_max} "
                       f"NaN-dropping, {r.nan_max} NaN-propagating max instructions)")
    return out


def toolchain_available() -> bool:
    """True when triton's bundled ptxas and cuobjdump exist (they ship in the wheel)."""
    return all(os.path.exists(_tool(t)) for t in ("ptxas", "cuobjdump"))
