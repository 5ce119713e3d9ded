"""What both Triton engines share: the tile-loading helpers their kernels inline, the tile
configuration type, the output-buffer rule and the dtype/precision choices of a launch.

Imported by ``softmax.py``, ``pairwise.py`` and ``norms.py``; it imports none of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

EPS = 1e-12


@triton.jit
def nan_max(a, b):
    """max(a, b) that propagates NaN. PTX max.f32 (tl.maximum's default) returns the other
    operand, so a NaN logit would vanish from a running max on a GPU (the interpreter's
    numpy maximum propagates it and would hide the difference)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nan_max_reduce(x, axis: tl.constexpr):
    """The NaN-propagating max of x along axis (tl.max ignores NaN on a GPU)."""
    return tl.reduce(x, axis, nan_max)


@triton.jit
def split_range(split, tiles_per_split, n_tiles):
    """(first tile, tile count) of one split of the other side's tiles (launch.split_grid
    sizes the splits)."""
    lo = split * tiles_per_split
    return lo, tl.minimum(tiles_per_split, n_tiles - lo)


@triton.jit
def dot_tile(A, B, offs_a, offs_b, NA, NB, D, stride_a, stride_b,
              BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
              ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Raw ⟨a_i, b_j⟩ for one BLOCK_A×BLOCK_B tile, reduced over D in BLOCK_K chunks."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    for d0 in range(0, D, BLOCK_K):
        offs_d = d0 + tl.arange(0, BLOCK_K)
        a = tl.load(A + offs_a[:, None] * stride_a + offs_d[None, :],
                    mask=(offs_a[:, None] < NA) & (offs_d[None, :] < D), other=0.0)
        bt = tl.load(B + offs_b[None, :] * stride_b + offs_d[:, None],
                     mask=(offs_b[None, :] < NB) & (offs_d[:, None] < D), other=0.0)
        if UPCAST:
            a = a.to(ACC)
            bt = bt.to(ACC)
        acc = tl.dot(a, bt, acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def streamed_grad_products(A, B, DA, DB, offs_a, offs_b, a_ok, b_ok, ds_a, ds_b, inv, D,
                           stride_a, stride_b, stride_da, stride_db, da_atomic,
                           NEED_DA: tl.constexpr, NEED_DB: tl.constexpr,
                           SCALED: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
                           UPCAST: tl.constexpr, PREC: tl.constexpr):
    """The two gradient products of one tile when D is streamed in BLOCK_K chunks (too
    wide for on-chip rows), shared by both engines' backward kernels:
      DA[a] += ds_b·B   (NEED_DA: read-modify-written in this program's own slice, or
                         added by atomics with da_atomic: the columns are split)
      DB[b] += ds_aᵀ·A  (NEED_DB: atomics)
    With SCALED the dS operands carry the tile's power of two and each product is
    multiplied back by ``inv``."""
    for d0 in range(0, D, BLOCK_K):
        offs_d = d0 + tl.arange(0, BLOCK_K)
        d_ok = offs_d[None, :] < D
        if NEED_DA:
            b_c = tl.load(B + offs_b[:, None] * stride_b + offs_d[None, :],
                          mask=b_ok[:, None] & d_ok, other=0.0)
            if UPCAST:
                b_c = b_c.to(ACC)
            da_ptr = DA + offs_a[:, None] * stride_da + offs_d[None, :]
            da_c = tl.dot(ds_b.to(b_c.dtype), b_c, input_precision=PREC, out_dtype=ACC)
            if SCALED:
                da_c = da_c * inv
            if da_atomic != 0:
                tl.atomic_add(da_ptr, da_c, mask=a_ok[:, None] & d_ok, sem="relaxed")
            else:
                da_c += tl.load(da_ptr, mask=a_ok[:, None] & d_ok, other=0.0)
                tl.store(da_ptr, da_c, mask=a_ok[:, None] & d_ok)
        if NEED_DB:
            a_c = tl.load(A + offs_a[:, None] * stride_a + offs_d[None, :],
                          mask=a_ok[:, None] & d_ok, other=0.0)
            if UPCAST:
                a_c = a_c.to(ACC)
            db_part = tl.dot(tl.trans(ds_a.to(a_c.dtype)), a_c, input_precision=PREC,
                             out_dtype=ACC)
            if SCALED:
                db_part = db_part * inv
            tl.atomic_add(DB + offs_b[:, None] * stride_db + offs_d[None, :], db_part,
                          mask=b_ok[:, None] & d_ok, sem="relaxed")


@triton.jit
def write_owned_rows(DA, da_acc, offs_a, a_ok, D, stride_da, da_atomic,
                     BLOCK_K: tl.constexpr):
    """The owned gradient rows, accumulated on chip, written once: a plain store, or one
    atomic add per element when other programs (splits of the columns) add to them too."""
    offs_d = tl.arange(0, BLOCK_K)
    da_ptr = DA + offs_a[:, None] * stride_da + offs_d[None, :]
    da_mask = a_ok[:, None] & (offs_d[None, :] < D)
    if da_atomic != 0:
        tl.atomic_add(da_ptr, da_acc, mask=da_mask, sem="relaxed")
    else:
        tl.store(da_ptr, da_acc, mask=da_mask)


@triton.jit
def load_rows(X, offs, n, D, stride,
               BLOCK_K: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """The whole (padded) rows X[offs, :D] as one BLOCK×BLOCK_K tile (D ≤ BLOCK_K)."""
    offs_d = tl.arange(0, BLOCK_K)
    x = tl.load(X + offs[:, None] * stride + offs_d[None, :],
                mask=(offs[:, None] < n) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(ACC)
    return x



@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int
    one_chunk: bool
    num_warps: int
    num_stages: int
    occupancy: int = 1  # resident blocks per SM (from the compiled registers and shared)


NUM_STAGES = 2
# ptxas's default register heuristic leaves some pairwise and mining kernels at 96-128
# registers and spills a long-lived value across the tile loop (8-16 B of local memory);
# an explicit cap at the architectural maximum lets it keep everything in registers (36
# spilling run-time binaries down to 0). The softmax kernels go the other way under the
# cap (6 more fp32 backward binaries and sm_80's 128×64 forward at D = 256 spill), so they
# keep the default. The option is passed on every launch, the interpreter's too, so that
# the launches the AOT proof records (proof/catalogue.py) carry what a GPU launch has.
MAXNREG = 255


def launch_options(cfg: "TileConfig", cap_registers: bool = False) -> dict:
    """The launch options of a tile kernel: warps, stages and (cap_registers) MAXNREG."""
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cap_registers:
        opts["maxnreg"] = MAXNREG
    return opts


_INTERPRET_BLOCK = 32  # small tiles so that CPU tests cross several tile boundaries
_INTERPRET_CHUNK_K = 16


POISON_ENV = "CONTRASTIVE_KERNELS_POISON"


def out_buffer(shape, dtype, device) -> torch.Tensor:
    """An output buffer every element of which a kernel must write.

    With CONTRASTIVE_KERNELS_POISON=1 (the test suite sets it) it starts as NaN, so an
    element a kernel forgot to write shows up as NaN instead of stale memory.
    """
    if os.environ.get(POISON_ENV) == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def rows_aligned(*xs: torch.Tensor) -> bool:
    """Whether every row of every x starts 16-byte aligned (what Triton's divisibility
    hints need): aligned data and a row stride that is a multiple of 16 elements."""
    return all(x.data_ptr() % 16 == 0 and x.stride(0) % 16 == 0 for x in xs)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dtype_class(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "fp64"
    return "fp32" if dtype == torch.float32 else "half"


def interpret_tiles(D: int) -> TileConfig:
    """The interpreter's tile for width D (every engine, every pass): small, so that CPU
    tests cross several tile boundaries, one register tile up to D = 32 and D streamed in
    chunks above, so both code paths run."""
    d_pow2 = max(16, triton.next_power_of_2(D))
    one = d_pow2 <= 32
    return TileConfig(_INTERPRET_BLOCK, _INTERPRET_BLOCK, d_pow2 if one else _INTERPRET_CHUNK_K,
                      one, 4, 1)


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 for fp64 inputs, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def upcast(dtype: torch.dtype) -> bool:
    # The interpreter computes tl.dot on bf16 wrongly; compute half inputs in fp32 there.
    return interpreting() and dtype in (torch.float16, torch.bfloat16)


def row_block(D: int) -> tuple[int, int]:
    """(rows, D chunk) of the row-wise kernels: 1024-element tiles, which compile without
    spills for every dtype on sm_80/sm_90 (these kernels are memory-bound anyway)."""
    block_d = max(16, min(triton.next_power_of_2(max(D, 1)), 256))
    return max(1, 1024 // block_d), block_d


def pow2_scale(bound: torch.Tensor) -> torch.Tensor:
    """σ = 2^e (0-dim, on the device, no synchronization) with σ·bound ≤ 2^14, for fp16
    tile-product operands bounded in magnitude by ``bound``; 1 where bound is 0 or not
    finite. Shared by the softmax and pairwise engines."""
    e = torch.floor(torch.log2(16384.0 / bound))
    e = torch.where(torch.isfinite(e), e.clamp(-100, 100), torch.zeros_like(e))
    return torch.exp2(e)
