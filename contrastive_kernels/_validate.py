"""Input checks shared by every public loss: clear errors that name the argument."""
from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def features(x, name: str, ndims=(2,)) -> None:
    """x must be a floating tensor of one of the given ranks with no empty dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has feature dimension D = 0")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): the loss is undefined")


def same_kind(ref, ref_name: str, other, other_name: str) -> None:
    """Same dtype, device and feature width D."""
    if other.device != ref.device:
        raise ValueError(f"{other_name} is on {other.device} but {ref_name} is on {ref.device}")
    if other.dtype != ref.dtype:
        raise TypeError(f"{other_name} has dtype {other.dtype} but {ref_name} has {ref.dtype}")
    if other.shape[-1] != ref.shape[-1]:
        raise ValueError(f"{other_name} has D = {other.shape[-1]} but {ref_name} has "
                         f"D = {ref.shape[-1]}")


def same_rows(ref, ref_name: str, other, other_name: str) -> None:
    if other.shape[0] != ref.shape[0]:
        raise ValueError(f"{other_name} has {other.shape[0]} rows but {ref_name} has "
                         f"{ref.shape[0]}: they must be paired row by row")


def labels(y, name: str, n: int, device) -> None:
    """y must be a 1-D integer tensor of length n on the features' device."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"{name} is on {y.device} but the features are on {device}")


def scalar(value, name: str, device, *, positive: bool = False,
           non_negative: bool = False) -> None:
    """A Python number or a 0-dim floating tensor on the features' device; ``positive``:
    > 0, ``non_negative``: >= 0 (NaN fails both)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got shape "
                             f"{tuple(value.shape)}")
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name} tensor must be floating point, got {value.dtype}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name} is on {value.device} but the features are on {device}")
        if torch.compiler.is_compiling():
            # Reading a tensor's value would end the graph; a traced loss checks the
            # value of a float argument only (a learnable temperature is positive by
            # construction, e.g. exp of a parameter).
            return
        number = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    if positive and not number > 0:
        raise ValueError(f"{name} must be > 0, got {number}")
    if non_negative and not number >= 0:
        raise ValueError(f"{name} must be >= 0, got {number}")


def reduction(value) -> None:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {value!r}")


def choice(value, name: str, allowed) -> None:
    """value must be one of ``allowed`` (a ValueError naming the argument lists them)."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def estimator(tau_plus, beta, n_negatives: int, *, conflicts=()) -> None:
    """The debiased / hard-negative options: 0 ≤ tau_plus < 1 and beta ≥ 0 (Python
    numbers); when either is set, at least one negative per row and none of the named
    options in ``conflicts`` (name, is_set) that have no meaning with them."""
    for value, name in ((tau_plus, "tau_plus"), (beta, "beta")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    if tau_plus == 0 and beta == 0:
        return
    if n_negatives < 1:
        raise ValueError("tau_plus/beta need at least one negative per row, got a batch "
                         "with none")
    for name, is_set in conflicts:
        if is_set:
            raise ValueError(f"tau_plus/beta cannot be combined with {name}")


def mnrl_options(directions, partition_mode, hardness_mode) -> None:
    """The candidate-set options of multiple_negatives_ranking_loss."""
    from .losses.multiple_negatives_ranking import (DIRECTIONS, HARDNESS_MODES,
                                                    PARTITION_MODES)
    if isinstance(directions, str) or not directions:
        raise ValueError(f"directions must be a non-empty tuple of {DIRECTIONS}, got "
                         f"{directions!r}")
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"directions: unknown {sorted(unknown)}; valid: {DIRECTIONS}")
    if "query_to_doc" not in directions:
        raise ValueError("directions must include 'query_to_doc' (it holds the positive)")
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got "
                         f"{partition_mode!r}")
    if partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(directions):
        raise ValueError("partition_mode='per_direction' needs every direction to contain "
                         "the positive; 'query_to_query' and 'doc_to_doc' do not")
    if hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES}, got "
                         f"{hardness_mode!r}")


def row_weights(w, name: str, n: int, device) -> None:
    """A floating (n,) or (2n,) tensor of per-row weights on the features' device."""
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.Tensor, got "
                        f"{getattr(w, 'dtype', type(w).__name__)}")
    if w.dim() != 1 or w.shape[0] not in (n, 2 * n):
        raise ValueError(f"{name} must have shape ({n},) or ({2 * n},), got {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"{name} is on {w.device} but the features are on {device}")
