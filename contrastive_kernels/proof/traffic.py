"""Count what every Triton kernel launch asks of global memory, under the interpreter.

    with count_launches() as records:
        loss = ck.clip_loss(x, y, 10.0, backend="triton")   # TRITON_INTERPRET=1, CPU tensors
    summarize(records)

Each launch appends one record, a plain dict:

- ``kernel``: the ``@triton.jit`` function's name;
- ``programs``: programs in the grid (product of its dims);
- ``num_warps``: as the launcher passed it, ``None`` where it left Triton's default (4);
- ``bytes_loaded`` / ``bytes_stored`` / ``bytes_atomic``: element size of the pointer's
  element type × number of *unmasked* lanes, summed over every global load / store /
  atomic read-modify-write (counted once per lane, not as a read plus a write) of every
  program. Masked-off lanes are not counted and an ``other=`` fill is not a load;
  a scalar ``tl.load(PTR)`` counts one element;
- ``flops``: 2·M·N·K per ``tl.dot`` of an (M, K) by (K, N) operand pair (batched dots
  times their batch), summed over every execution; ``dots``: the number of dot calls.

What is counted is what the kernels *request*: no cache is modelled, so a tile that a GPU
would find in L2 counts again on every load. Work that the launchers do with torch outside
kernels (``torch.zeros``, sums, divisions) is not a Triton launch and is not counted.

How: Triton 3.8's interpreter runs a launch as ``GridExecutor.__call__``, which sets the
grid on the module's ``InterpreterBuilder`` (``set_grid_dim``) and runs the programs one
after another; every memory access and dot of a program goes through the builder's
``create_masked_load`` (plain and descriptor loads too), ``create_masked_store``,
``create_atomic_rmw``, ``create_atomic_cas``, ``create_dot`` and ``create_dot_scaled``.
``count_launches`` wraps those class attributes for the duration of the ``with`` block and
puts the originals back on exit, also when the block raises. The library never imports
this module.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Iterator

import numpy as np

from triton.runtime import interpreter as _interp

RECORD_KEYS = ("kernel", "programs", "num_warps", "bytes_loaded", "bytes_stored",
               "bytes_atomic", "flops", "dots")

_Builder = _interp.InterpreterBuilder
_Executor = _interp.GridExecutor
_HOOKED = ("create_masked_load", "create_masked_store", "create_atomic_rmw",
           "create_atomic_cas", "create_dot", "create_dot_scaled", "set_grid_dim")

# One counter at a time, process-wide: the interpreter's builder is a module singleton.
_LOCK = threading.Lock()
_state: dict = {"records": None, "current": None}


class CounterActiveError(RuntimeError):
    """count_launches() was entered while another count_launches() is active."""


def _element_bytes(handle) -> int:
    """Bytes of one element of a pointer handle's element type (int1 is stored as 1 B)."""
    return max(1, handle.get_element_ty().primitive_bitwidth // 8)


def _lanes(ptrs, mask) -> int:
    """Unmasked lanes of an access: the mask (None = all) broadcast to the pointers."""
    if mask is None:
        return int(ptrs.data.size)
    return int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape)))


def _add(key: str, amount: int) -> None:
    """Add to the running launch's record (accesses outside a launch have no record)."""
    record = _state["current"]
    if record is not None:
        record[key] += amount


def _dot_flops(a_shape, b_shape) -> int:
    """2·M·N·K (times the batch) for an (..., M, K) @ (..., K, N) dot."""
    return 2 * math.prod(a_shape[:-1]) * b_shape[-1] * a_shape[-1]


def _make_hooks(orig: dict) -> dict:
    """Replacements for the builder and executor methods; each counts, then calls the
    original with the same arguments and returns its result unchanged."""
    def create_masked_load(self, ptrs, mask, other, *args, **kwargs):
        _add("bytes_loaded", _element_bytes(ptrs) * _lanes(ptrs, mask))
        return orig["create_masked_load"](self, ptrs, mask, other, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        _add("bytes_stored", _element_bytes(ptrs) * _lanes(ptrs, mask))
        return orig["create_masked_store"](self, ptrs, value, mask, *args, **kwargs)

    def create_atomic_rmw(self, op, ptr, val, mask, *args, **kwargs):
        _add("bytes_atomic", _element_bytes(ptr) * _lanes(ptr, mask))
        return orig["create_atomic_rmw"](self, op, ptr, val, mask, *args, **kwargs)

    def create_atomic_cas(self, ptr, cmp, val, *args, **kwargs):
        _add("bytes_atomic", _element_bytes(ptr) * _lanes(ptr, None))
        return orig["create_atomic_cas"](self, ptr, cmp, val, *args, **kwargs)

    def create_dot(self, a, b, *args, **kwargs):
        _add("flops", _dot_flops(a.data.shape, b.data.shape))
        _add("dots", 1)
        return orig["create_dot"](self, a, b, *args, **kwargs)

    def create_dot_scaled(self, lhs, lhs_scale, lhs_fmt, rhs, rhs_scale, rhs_fmt, fast_math,
                          lhs_k_pack, rhs_k_pack, acc):
        # fp4 operands are packed two values a byte: count the unpacked K that the
        # interpreter multiplies, and M·N from the result.
        k = _interp._prepare_dot_scaled_operand(lhs, lhs_scale, lhs_fmt, lhs_k_pack,
                                                is_rhs=False).shape[-1]
        out = orig["create_dot_scaled"](self, lhs, lhs_scale, lhs_fmt, rhs, rhs_scale, rhs_fmt,
                                        fast_math, lhs_k_pack, rhs_k_pack, acc)
        _add("flops", 2 * int(out.data.size) * k)
        _add("dots", 1)
        return out

    def set_grid_dim(self, nx, ny, nz):
        _add("programs", int(nx) * int(ny) * int(nz))  # called once per launch, from 0
        return orig["set_grid_dim"](self, nx, ny, nz)

    def executor_call(self, *args, **kwargs):
        return _count_launch(orig["__call__"], self, args, kwargs)

    hooks = dict(create_masked_load=create_masked_load, create_masked_store=create_masked_store,
                 create_atomic_rmw=create_atomic_rmw, create_atomic_cas=create_atomic_cas,
                 create_dot=create_dot, create_dot_scaled=create_dot_scaled,
                 set_grid_dim=set_grid_dim)
    hooks["__call__"] = executor_call
    return hooks


def _count_launch(run, executor, args, kwargs):
    """Run one GridExecutor launch with a fresh record current; append it when it ends."""
    record = dict(kernel=executor.fn.__name__, programs=0,
                  num_warps=kwargs.get("num_warps"), bytes_loaded=0, bytes_stored=0,
                  bytes_atomic=0, flops=0, dots=0)
    _state["current"] = record
    try:
        out = run(executor, *args, **kwargs)
    finally:
        _state["current"] = None
    if _state["records"] is not None:
        _state["records"].append(record)
    return out


def _originals() -> dict:
    """The methods the hooks replace, as found on the classes now."""
    orig = {name: _Builder.__dict__[name] for name in _HOOKED}
    orig["__call__"] = _Executor.__dict__["__call__"]
    return orig


def _put(methods: dict) -> None:
    """Set the builder's and executor's methods (hooks in, or originals back)."""
    for name in _HOOKED:
        setattr(_Builder, name, methods[name])
    _Executor.__call__ = methods["__call__"]


def hooks_installed() -> bool:
    """True while count_launches() has the interpreter's methods replaced."""
    return _state["records"] is not None


@contextlib.contextmanager
def count_launches() -> Iterator[list[dict]]:
    """Yield a list that receives one record (keys: RECORD_KEYS) per Triton kernel launch
    run in the block, under the interpreter (TRITON_INTERPRET=1, set before the kernels
    were decorated). Raises CounterActiveError when already active (no nesting) and
    RuntimeError when the interpreter is off (the kernels would run compiled, unseen)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("count_launches needs TRITON_INTERPRET=1 (set before the "
                           "kernels are imported): compiled launches cannot be counted")
    if not _LOCK.acquire(blocking=False):
        raise CounterActiveError("count_launches() is already active; it does not nest")
    records: list[dict] = []
    try:
        orig = _originals()
        _put(_make_hooks(orig))
        _state["records"] = records
        try:
            yield records
        finally:
            _state["records"] = None
            _state["current"] = None
            _put(orig)
    finally:
        _LOCK.release()


def _total(records: list[dict], key: str) -> int:
    # .get: records of other counters (proof/cuda_traffic.py) may lack "dots".
    return sum(r.get(key, 0) for r in records)


def summarize(records: list[dict]) -> dict:
    """Totals over records: launches, programs, bytes_loaded/stored/atomic, bytes (their
    sum), flops, dots, flop_per_byte (flops / bytes; inf with flops and no bytes, 0 with
    neither), tile_programs (``programs`` of each launch with flops > 0, in launch order)
    and min_programs_of_tile_launches (their minimum; None without such launches)."""
    out = {key: _total(records, key) for key in
           ("programs", "bytes_loaded", "bytes_stored", "bytes_atomic", "flops", "dots")}
    out["launches"] = len(records)
    out["bytes"] = out["bytes_loaded"] + out["bytes_stored"] + out["bytes_atomic"]
    out["flop_per_byte"] = (out["flops"] / out["bytes"] if out["bytes"]
                            else (math.inf if out["flops"] else 0.0))
    tiles = [r["programs"] for r in records if r["flops"] > 0]
    out["tile_programs"] = tiles
    out["min_programs_of_tile_launches"] = min(tiles) if tiles else None
    return out


def by_kernel(records: list[dict]) -> dict[str, dict]:
    """Per kernel name (first-launch order): launches, programs (list per launch),
    bytes_loaded/stored/atomic and flops summed over its launches."""
    out: dict[str, dict] = {}
    for r in records:
        row = out.setdefault(r["kernel"], dict(launches=0, programs=[], bytes_loaded=0,
                                                bytes_stored=0, bytes_atomic=0, flops=0))
        row["launches"] += 1
        row["programs"].append(r["programs"])
        for key in ("bytes_loaded", "bytes_stored", "bytes_atomic", "flops"):
            row[key] += r[key]
    return out
