"""Count the global-memory traffic and tile-product FLOPs of the CUDA C++ engine's kernels,
without a GPU: on the CPU emulation build (``contrastive_kernels._C_cuda_emu``, csrc/emu).

    import os; os.environ["CONTRASTIVE_KERNELS_CUDA_EMULATE"] = "1"   # before the import
    import contrastive_kernels as ck
    from contrastive_kernels.proof.cuda_traffic import count_cuda_launches, totals

    with count_cuda_launches() as launches:
        ck.clip_loss(x, y, 10.0, backend="cuda").backward()   # CPU tensors
    print(totals(launches))

Each record is a plain dict, one per kernel launch of the emulated engine, in launch order:

- ``kernel``: the kernel's name with its template arguments, e.g.
  ``"bwd_kernel<__nv_bfloat16, false, true, false>"``;
- ``programs``: blocks in the grid; ``num_warps``: warps per block;
- ``bytes_loaded`` / ``bytes_stored`` / ``bytes_atomic``: bytes of global memory the kernel
  code loads, stores and atomically adds, as the code requests them, every thread's access
  counted (a value 32 lanes each load counts 32 times; what the caches then do is not
  modelled) — csrc/cuda/memory.cuh routes every global access through counted helpers in the
  emulation build (the nvcc build compiles them to the plain access);
- ``flops``: 2·m·n·k per tile product (per MMA instruction of a warp, per SIMT FMA 2); the
  element-wise epilogues (exp, masks) are not counted.

Only the engine's own kernels are launches here: the tensors the host code allocates and
fills with torch (zeroed accumulators, the final torch reductions of per-row partials) are
not counted.

The records are appended to the yielded list when the block exits. Nested uses each see the
launches of their own block. The grids are planned for the GPU the emulator stands for (an
H100: 132 SMs, 227 KB of shared memory per block; ``CONTRASTIVE_KERNELS_LAUNCH_AS=sm_80``: an
A100, 108 SMs, 163 KB), with the same occupancy model as on a device.

Cost: emulated launches run one fiber per CUDA thread, switched at barriers (until
2026-12-03 one OS thread per CUDA thread, when CLIP N = M = 2048, D = 256 bf16 forward +
backward took 6–10 minutes on two shared cores; fibers made the emulated test harness ten
times faster). At a
reduced size the tile kernels' operand bytes and FLOPs scale with the tiles visited
(N/64 · M/64 · D) and the per-row terms with N·D, but the column split — and with it the
grid, the split partials and the atomics of the owned gradient rows — is planned for the
size at hand, so count the shape you mean rather than scaling a smaller one.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

EMULATE_ENV = "CONTRASTIVE_KERNELS_CUDA_EMULATE"
KEYS = ("kernel", "programs", "bytes_loaded", "bytes_stored", "bytes_atomic", "flops",
        "num_warps")


def _extension():
    if os.environ.get(EMULATE_ENV) != "1":
        raise RuntimeError(
            f"count_cuda_launches counts the emulated CUDA engine: set {EMULATE_ENV}=1 before "
            "contrastive_kernels is imported, and run backend='cuda' on CPU tensors")
    try:
        from .. import _C_cuda_emu
    except ImportError as e:  # pragma: no cover - depends on the build
        raise RuntimeError(f"the CUDA emulation extension is not built: {e}") from e
    return _C_cuda_emu


@contextlib.contextmanager
def count_cuda_launches() -> Iterator[list]:
    """Yields a list that receives one dict per emulated kernel launch (see the module doc)
    made inside the ``with`` block, when the block exits."""
    ext = _extension()
    token = ext.traffic_begin()
    records: list = []
    try:
        yield records
    finally:
        records.extend(dict(r) for r in ext.traffic_end(token))


def totals(records: list) -> dict:
    """Sums of the byte and FLOP counts, launches, and FLOP per byte moved (loads + stores +
    atomics)."""
    out = {k: sum(r[k] for r in records) for k in ("bytes_loaded", "bytes_stored",
                                                     "bytes_atomic", "flops")}
    moved = out["bytes_loaded"] + out["bytes_stored"] + out["bytes_atomic"]
    out["launches"] = len(records)
    out["flop_per_byte"] = out["flops"] / moved if moved else 0.0
    return out


def by_kernel(records: list) -> dict:
    """Per kernel name: the summed counts, the launches, and the largest grid."""
    out: dict = {}
    for r in records:
        t = out.setdefault(r["kernel"], {"launches": 0, "programs": 0, "bytes_loaded": 0,
                                         "bytes_stored": 0, "bytes_atomic": 0, "flops": 0})
        t["launches"] += 1
        t["programs"] = max(t["programs"], r["programs"])
        for k in ("bytes_loaded", "bytes_stored", "bytes_atomic", "flops"):
            t[k] += r[k]
    return out
