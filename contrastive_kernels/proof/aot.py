"""Ahead-of-time compilation of every Triton kernel variant the launcher can pick.

No GPU is needed: ``triton.compile`` lowers each variant to PTX and cubin for a target
compute capability, and the cubin is read with the ``cuobjdump``/``nvdisasm`` that ship in
the triton wheel. This keeps the GPU path honest on machines without a GPU, since the
interpreter accepts kernels that the GPU compiler rejects.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
import importlib
from typing import Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..backends.triton import pairwise as tp
from ..backends.triton import softmax as te
from ..backends.triton import tiles
from ..backends.triton.tiles import TileConfig

KERNEL_PACKAGE = "contrastive_kernels.backends.triton"

ARCHES = (80, 90)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# One feature width per tile class the launcher distinguishes (see tile_config).
REPRESENTATIVE_D = (1, 17, 33, 65, 129)

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
        torch.float64: "*fp64"}

# Constexpr flag sets of the launches (backends/triton/softmax.py): the forward with and
# without column statistics (the diagonal mask is a runtime argument), and every backward
# pass: owning rows or columns, with or without the owned side's gradient (NEED_DA) and the
# other side's atomic gradient (NEED_DB); atomic-vs-store of the owned rows is runtime.
FWD_FLAGS = (dict(NEED_COL=False), dict(NEED_COL=True))
BWD_PASSES = tuple(dict(TRANSPOSED=t, NEED_DA=a, NEED_DB=b)
                   for t in (False, True) for a in (True, False) for b in (True, False))
BWD_MASKS = (dict(HAS_COL=False), dict(HAS_COL=True))


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: str  # attribute of ``module`` (a name, so variants pickle to workers)
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    dtype: torch.dtype
    is_mma: bool  # contains a tile product that should use tensor cores
    module: str = "softmax"  # the module of KERNEL_PACKAGE that defines the kernel
    maxnreg: int | None = None  # the launcher's register cap, when it sets one


def _acc(dtype):
    return "*fp64" if dtype == torch.float64 else "*fp32"


def _precisions(dtype) -> tuple[str, ...]:
    return ("ieee", "tf32") if dtype == torch.float32 else ("ieee",)


def _fwd_signature(dtype):
    x, a = _PTR[dtype], _acc(dtype)
    return {"Q": x, "K": x, "RQ": a, "RK": a, "SCALE": a, "ROW_KEY": "*i64",
            "COL_KEY": "*i64", "PART_M": a, "PART_L": a, "PART_POS": a, "COL_M": a,
            "COL_L": a, "N": "i32", "M": "i32", "D": "i32", "stride_q": "i32",
            "stride_k": "i32", "tiles_per_split": "i32", "mask_diag": "i32"}


def _bwd_signature(dtype):
    x, a = _PTR[dtype], _acc(dtype)
    return {"A": x, "B": x, "RA": a, "RB": a, "SCALE": a, "ROW_KEY": "*i64", "COL_KEY": "*i64",
            "LSE": a, "G_LSE": a, "G_POS": a, "CLSE": a, "G_CLSE": a, "DA": a, "DB": a,
            "DSCALE": a, "NA": "i32", "NB": "i32", "D": "i32", "stride_a": "i32",
            "stride_b": "i32", "stride_da": "i32", "stride_db": "i32",
            "split_stride_da": "i32", "tiles_per_split": "i32", "mask_diag": "i32",
            "da_atomic": "i32"}


def _with_constexprs(sig: dict, constexprs: dict) -> dict:
    out = dict(sig)
    out.update({k: "constexpr" for k in constexprs})
    return out


def _tile_configs(dtype, tile_config=te.tile_config) -> list[tuple[TileConfig,
                                                                    TileConfig]]:
    """The distinct (forward, backward) tiles ``tile_config`` (the softmax engine's, or
    the pairwise engine's) picks over the representative widths, for any architecture."""
    seen = []
    for d in REPRESENTATIVE_D:
        for arch in ARCHES:
            try:
                cfgs = tile_config(d, dtype, interpret=False, arch=arch)
            except TypeError:  # a tile table with one entry for every architecture
                cfgs = tile_config(d, dtype, interpret=False)
            if cfgs not in seen:
                seen.append(cfgs)
    return seen


def _tiles(cfg: TileConfig, acc) -> dict:
    return dict(BLOCK_K=cfg.block_k, ONE_CHUNK=cfg.one_chunk, ACC=acc, UPCAST=False)


def _tag(dtype, cfg: TileConfig) -> str:
    chunk = "" if cfg.one_chunk else "c"
    return (f"{str(dtype)[6:]}_{cfg.block_m}x{cfg.block_n}k{cfg.block_k}{chunk}"
            f"w{cfg.num_warps}")


def _flag_tag(flags: dict) -> str:
    return "".join(k[0] for k, v in flags.items() if v is True) or "-"


def kernel_variants(kind: str, dtype, cfg: TileConfig) -> Iterator[Variant]:
    """Every flag/precision variant of one engine kernel ("fwd" or "bwd") at one tile."""
    acc = tiles.tl_acc(dtype)
    for prec in _precisions(dtype):
        if kind == "fwd":
            for flags in FWD_FLAGS:
                ce = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PREC=prec,
                          **_tiles(cfg, acc), **flags)
                yield Variant(f"fwd_{_tag(dtype, cfg)}_{prec}_{_flag_tag(flags)}",
                              "_softmax_fwd_kernel", _with_constexprs(_fwd_signature(dtype), ce),
                              ce, cfg.num_warps, cfg.num_stages, dtype, True)
            continue
        for mode in BWD_PASSES:
            for masks in BWD_MASKS:
                flags = {**mode, **masks}
                ce = dict(BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, PREC=prec,
                          **_tiles(cfg, acc), **flags)
                yield Variant(f"bwd_{_tag(dtype, cfg)}_{prec}_{_flag_tag(flags)}",
                              "_softmax_bwd_kernel", _with_constexprs(_bwd_signature(dtype), ce),
                              ce, cfg.num_warps, cfg.num_stages, dtype, True)


# Pairwise engine passes (backends/triton/pairwise.py): the forward (forward tiles), and the
# backward's one-pass (atomic) and deterministic row pass, and the deterministic column
# pass (backward tiles). mask_diag and want_rows are runtime arguments of every pass.
PAIR_FWD_PASSES = (dict(GRAD=False, TRANSPOSED=False, ATOMIC_B=False),)
PAIR_BWD_PASSES = (dict(GRAD=True, TRANSPOSED=False, ATOMIC_B=True),
                   dict(GRAD=True, TRANSPOSED=False, ATOMIC_B=False),
                   dict(GRAD=True, TRANSPOSED=True, ATOMIC_B=False))
PAIR_KINDS = ((tp.SIGLIP, "sig"), (tp.HADSELL, "had"))


def _pair_signature(dtype):
    x, a = _PTR[dtype], _acc(dtype)
    return {"A": x, "B": x, "RA": a, "RB": a, "SQA": a, "SQB": a, "PARAMS": a,
            "ROW_KEY": "*i64", "COL_KEY": "*i64", "G": a, "ROWS": a, "DA": a, "DB": a,
            "SUM_A": a, "SUM_B": a, "PART": a, "NA": "i32", "NB": "i32", "D": "i32",
            "stride_a": "i64", "stride_b": "i64", "stride_da": "i64", "stride_db": "i64",
            "mask_diag": "i32", "want_rows": "i32"}


def _hardest_signature(dtype):
    a = _acc(dtype)
    return {"X": _PTR[dtype], "RX": a, "SQ": a, "KEY": "*i64", "POS": "*i64", "NEG": "*i64",
            "N": "i32", "D": "i32", "stride_x": "i64"}


def pair_variants(passes, dtype, cfg: TileConfig) -> Iterator[Variant]:
    """Every KIND × pass × precision variant of the pairwise tile kernel at one tile."""
    acc = tiles.tl_acc(dtype)
    for prec in _precisions(dtype):
        for kind, kind_tag in PAIR_KINDS:
            for flags in passes:
                ce = dict(BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, PREC=prec, KIND=kind,
                          TILE_SCALE=tp.tile_scale(kind, dtype), **_tiles(cfg, acc), **flags)
                tag = "".join(k[0] for k, v in flags.items() if v is True)
                yield Variant(f"pair_{kind_tag}_{_tag(dtype, cfg)}_{prec}_{tag}",
                              "_pair_kernel", _with_constexprs(_pair_signature(dtype), ce), ce,
                              cfg.num_warps, cfg.num_stages, dtype, True, "pairwise",
                              tp.MAXNREG)


def pair_tile_configs(dtype) -> list[tuple[TileConfig, TileConfig]]:
    return _tile_configs(dtype, tp.tile_config)


def hardest_variants(dtype, cfg: TileConfig) -> Iterator[Variant]:
    acc = tiles.tl_acc(dtype)
    for prec in _precisions(dtype):
        ce = dict(BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, PREC=prec, **_tiles(cfg, acc))
        yield Variant(f"hardest_{_tag(dtype, cfg)}_{prec}", "_hardest_kernel",
                      _with_constexprs(_hardest_signature(dtype), ce), ce, cfg.num_warps,
                      cfg.num_stages, dtype, True, "pairwise", tp.MAXNREG)


def engine_variants() -> Iterator[Variant]:
    """Every (kernel, dtype, tile, warps, precision, flag set) the launcher can launch."""
    for dtype in DTYPES:
        for fwd_cfg, bwd_cfg in _tile_configs(dtype):
            yield from kernel_variants("fwd", dtype, fwd_cfg)
            yield from kernel_variants("bwd", dtype, bwd_cfg)
        yield from _row_kernel_variants(dtype)
        yield from pairwise_variants(dtype)


def pairwise_variants(dtype) -> Iterator[Variant]:
    """The pairwise engine's and the mining kernel's variants for one input dtype."""
    for fwd_cfg, bwd_cfg in pair_tile_configs(dtype):
        yield from pair_variants(PAIR_FWD_PASSES, dtype, fwd_cfg)
        yield from pair_variants(PAIR_BWD_PASSES, dtype, bwd_cfg)
        yield from hardest_variants(dtype, fwd_cfg)
    x, a, acc = _PTR[dtype], _acc(dtype), tiles.tl_acc(dtype)
    for block_r, block_d in _row_widths():
        ce = dict(BLOCK_R=block_r, BLOCK_D=block_d, ACC=acc)
        sig = {"X": x, "R": a, "OUT": a, "N": "i32", "D": "i32", "stride_x": "i64"}
        yield Variant(f"sq_norm_{str(dtype)[6:]}_r{block_r}d{block_d}", "_sq_norm_kernel",
                      _with_constexprs(sig, ce), ce, 4, 1, dtype, False, "pairwise")


def _row_widths():
    return sorted({tiles.row_block(d) for d in (1, 17, 33, 65, 129, 257, 1024, 4096)})


def _row_kernel_variants(dtype) -> Iterator[Variant]:
    x, a, acc = _PTR[dtype], _acc(dtype), tiles.tl_acc(dtype)
    tag = str(dtype)[6:]
    for block_r, block_d in _row_widths():
        ce = dict(EPS_C=tiles.EPS, BLOCK_R=block_r, BLOCK_D=block_d, ACC=acc)
        sig = {"X": x, "R": a, "N": "i32", "D": "i32", "stride_x": "i64"}
        yield Variant(f"inv_norm_{tag}_r{block_r}d{block_d}", "_inv_norm_kernel",
                      _with_constexprs(sig, ce), ce, 4, 1, dtype, False, "norms")
        for normalize in (False, True):
            ce2 = dict(ce, NORMALIZE=normalize, HAS_SIGMA=dtype == torch.float16)
            sig = {"X": x, "R": a, "G": a, "SCALE": a, "SIGMA": a, "DX": x, "N": "i32",
                   "D": "i32", "stride_x": "i32", "stride_g": "i32", "stride_dx": "i32",
                   "P": "i32", "part_stride": "i32"}
            yield Variant(f"norm_bwd_{tag}_r{block_r}d{block_d}_n{int(normalize)}",
                          "_norm_backward_kernel", _with_constexprs(sig, ce2), ce2, 4, 1,
                          dtype, False, "norms")
    sig = {"PART_M": a, "PART_L": a, "PART_SUM": a, "EXTRA": a, "LSE": a, "SUM": a,
           "P": "i32", "n": "i32", "parts_stride": "i32"}
    for has_sum, has_extra in ((True, False), (True, True), (False, False)):
        ce = dict(BLOCK=128, HAS_SUM=has_sum, HAS_EXTRA=has_extra, ACC=acc)
        yield Variant(f"merge_{tag}_s{int(has_sum)}e{int(has_extra)}", "_merge_kernel",
                      _with_constexprs(sig, ce), ce, 4, 1, dtype, False)


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
                mma_kinds="+".join(kinds) or "-")


def compile_variant(v: Variant, arch: int) -> "CompileReport":
    """Compile one variant for sm_<arch> and read its resource usage from the cubin."""
    module = importlib.import_module(f"{KERNEL_PACKAGE}.{v.module}")
    src = ASTSource(fn=getattr(module, v.kernel), signature=v.signature,
                    constexprs=v.constexprs)
    opts = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    if v.maxnreg is not None:
        opts["maxnreg"] = v.maxnreg
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    st = _cubin_stats(compiled.asm["cubin"])
    nan_max, plain_max = ptx_max_counts(compiled.asm["ptx"])
    return CompileReport(v.name, arch, st["registers"], compiled.metadata.shared,
                         st["stack"] + st["local"], st["local_insts"], st["mma"],
                         str(v.dtype)[6:], v.is_mma, st["mma_kinds"], v.kernel, nan_max,
                         plain_max)


def _compile_job(job: tuple[Variant, int]) -> CompileReport | str:
    variant, arch = job
    try:
        return compile_variant(variant, arch)
    except Exception as exc:  # reported per variant, so one failure names itself
        return f"{variant.name} sm_{arch}: {type(exc).__name__}: {exc}"


def compile_all(workers: int | None = None, arches=ARCHES,
                variants=None) -> list[CompileReport | str]:
    """Compile every launcher variant (or the given ones) for every arch; a str entry is
    a compile failure."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    variants = engine_variants() if variants is None else variants
    jobs = [(v, arch) for v in variants for arch in arches]
    workers = workers or max(1, os.cpu_count() or 1)
    # Fresh interpreters with the interpreter flag off: under TRITON_INTERPRET=1 (the CPU
    # test session) the kernels in this process are interpreted and cannot be compiled.
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            return list(pool.map(_compile_job, jobs, chunksize=4))
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


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
