"""Tolerances and comparison helpers, imported by the tests and the benchmarks alike.

Errors are measured against a float64 reference computed on the same (upcast) inputs, as
``max|actual − expected| / max(max|expected|, floor)``: relative to the tensor's scale,
so a gradient entry that is tiny by cancellation does not demand impossible digits.
"""
from __future__ import annotations

import torch

# SPEC §4. float64 is the gradcheck dtype: kernels accumulate in fp64 there.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    "tf32": 3e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}
_FLOOR = 1e-30


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The allowed relative error for inputs of ``dtype`` on ``device``."""
    if dtype == torch.float32 and torch.device(device).type == "cuda" \
            and torch.backends.cuda.matmul.allow_tf32:
        return TOLERANCES["tf32"]
    return TOLERANCES[dtype]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual − expected| / max(max|expected|, floor), computed in float64."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if e.numel() == 0:
        return 0.0
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    if nan_mismatch.any():
        return float("inf")
    finite = ~torch.isnan(e)
    if not finite.any():
        return 0.0
    diff = (a[finite] - e[finite]).abs().max().item()
    scale = max(e[finite].abs().max().item(), _FLOOR)
    return diff / scale


def assert_close(actual, expected, dtype: torch.dtype, what: str,
                 device: torch.device | str = "cpu") -> None:
    """Fail with the measured error when it exceeds the table's tolerance for ``dtype``."""
    err = relative_error(actual, expected)
    tol = tolerance(dtype, device)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})")
