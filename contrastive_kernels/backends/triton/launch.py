"""How a Triton launch is sized: the target architecture, its SM count and the split of a
long candidate axis across programs (flash-decoding style).

Every tile kernel's grid is (owned blocks, splits): a program owns a block of rows (or of
columns) and walks one contiguous range of the other side's tiles. Rows alone cannot fill
a GPU when they are few (64 MoCo queries, a few hundred local rows in distributed CLIP),
so the other side is split until the grid holds at least one full wave of programs; the
partial statistics of the splits are merged by a small kernel (forward) or by atomics /
fixed-order partial sums (backward). The split also bounds how many tiles one program sums
in a row (``MAX_TILES_PER_SPLIT``): the running sums are two-level (within a split, then
across splits), so a million-key queue keeps fp32 accuracy.

Under the Triton interpreter the launchers pick small tiles and a small stand-in machine
so that CPU tests cross tile, split and persistent-loop boundaries. With
``CONTRASTIVE_KERNELS_LAUNCH_AS=sm_90`` (or ``sm_80``) the interpreter instead gets
exactly the launch a GPU of that architecture would get: its tile table, warps, stages and
a grid sized with its SM count (132 for an H100, 108 for an A100), so that counting what
the interpreted kernels ask of memory measures the real launch.
"""
from __future__ import annotations

import functools
import os

import torch
import triton

from .tiles import TileConfig, interpreting

LAUNCH_AS_ENV = "CONTRASTIVE_KERNELS_LAUNCH_AS"
# SM counts of the GPUs a LAUNCH_AS architecture stands for (H100 SXM, A100).
SM_COUNT = {90: 132, 80: 108}
# Stand-in machine of the interpreter's test launches: a few programs per launch, and at
# most three tiles per split (7 tiles: 2 + 2 + 2 + 1), so that tests run multi-tile and
# ragged splits, staggered starts, merges and persistent loops.
_INTERPRET_SMS = 3
_INTERPRET_MAX_TILES = 3
# Tiles one program sums before its partial joins the others (two-level sums).
MAX_TILES_PER_SPLIT = 64
# Fewest tiles a split walks on a GPU launch. Every split reloads the owned block and
# writes (or atomically adds) its gradient rows once: below about four streamed tiles per
# split those fixed costs outweigh the tiles themselves (counted on the frozen-bank MoCo
# queue, 64 × 4,096, D = 128, sm_90 launch: 18.2 FLOP per requested byte with one-tile
# splits, 38.2 with four), so a short axis gets fewer programs rather than programs that
# mostly reload.
MIN_TILES_PER_SPLIT = 4


def launch_as() -> int | None:
    """The architecture (80 or 90) a launch under the interpreter stands for, from
    CONTRASTIVE_KERNELS_LAUNCH_AS; None when unset."""
    value = os.environ.get(LAUNCH_AS_ENV, "").strip().lower()
    if not value:
        return None
    arch = int(value.removeprefix("sm_")) if value.removeprefix("sm_").isdigit() else None
    if arch not in SM_COUNT:
        raise ValueError(f"{LAUNCH_AS_ENV}={value!r}: expected one of "
                         f"{', '.join(f'sm_{a}' for a in SM_COUNT)}")
    return arch


def target_arch(device: torch.device | None = None) -> int | None:
    """The architecture whose tile table a launch uses: the CUDA device's (capped to the
    tables we have: 80 or 90), the LAUNCH_AS one under the interpreter, or None for the
    interpreter's small test tiles."""
    if interpreting():
        return launch_as()
    if device is not None and device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return 90 if major >= 9 else 80
    return 90


@functools.lru_cache(maxsize=None)
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device a launch targets (the LAUNCH_AS GPU's
    under the interpreter, the stand-in machine's for test launches)."""
    if device.type == "cuda" and not interpreting():
        return _device_sms(device.index if device.index is not None
                           else torch.cuda.current_device())
    arch = launch_as() if interpreting() else None
    return SM_COUNT[arch] if arch else _INTERPRET_SMS


def max_tiles_per_split() -> int:
    return _INTERPRET_MAX_TILES if interpreting() and launch_as() is None \
        else MAX_TILES_PER_SPLIT


def min_tiles_per_split() -> int:
    return 1 if interpreting() and launch_as() is None else MIN_TILES_PER_SPLIT


def target_programs(cfg: TileConfig, device: torch.device) -> int:
    """Programs that fill the machine once: SMs × resident blocks per SM of this tile
    (its occupancy, from the compiled register and shared-memory use; see the tables)."""
    return sm_count(device) * cfg.occupancy


def split_grid(owned_blocks: int, other_tiles: int, cfg: TileConfig,
               device: torch.device) -> tuple[int, int]:
    """(splits, tiles per split) of the other side's ``other_tiles`` tiles: enough splits
    that owned_blocks × splits fills one wave, at most MAX_TILES_PER_SPLIT and (where
    the axis is long enough) at least MIN_TILES_PER_SPLIT tiles in a split, never an
    empty split (at least one split, of at least one tile)."""
    if other_tiles == 0:
        return 1, 1
    want = max(triton.cdiv(target_programs(cfg, device), max(owned_blocks, 1)),
               triton.cdiv(other_tiles, max_tiles_per_split()))
    # Round the split length down, so that rounding never leaves the wave unfilled.
    per_split = max(1, other_tiles // max(want, 1))
    per_split = min(max(per_split, min_tiles_per_split()), other_tiles)
    return triton.cdiv(other_tiles, per_split), per_split


def capped_splits(splits: int, per_split: int, other_tiles: int, part_elements: int,
                  limit: int) -> tuple[int, int]:
    """(splits, tiles per split) such that splits × part_elements ≤ limit: the
    deterministic mode keeps one fixed-order gradient partial of ``part_elements`` per
    split, so past the limit the splits get longer (a one-level sum over more tiles)
    rather than the partials taking gigabytes."""
    if splits * part_elements <= limit:
        return splits, per_split
    per_split = triton.cdiv(other_tiles, max(1, limit // max(part_elements, 1)))
    return triton.cdiv(other_tiles, per_split), per_split
