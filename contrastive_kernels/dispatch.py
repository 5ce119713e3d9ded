"""The one place that decides which backend computes a loss.

Loss code asks :func:`select` for a kernel engine; it gets ``None`` for the pure-PyTorch
reference (``"torch"``) or a backend module implementing both engines' interface
(``inverse_norms``/``forward``/``backward``/``pair_*``/``hardest_pairs``: see
``engines/softmax.py`` and ``engines/pairwise.py``).
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu")
ENV_VAR = "CONTRASTIVE_KERNELS_BACKEND"

# Losses whose tiled kernels exist on every kernel backend (all of SPEC §2): the softmax
# family on the softmax engine, SigLIP and Hadsell on the pairwise engine, batch-hard
# triplet on the mining kernel. A loss outside this set would get the reference from
# "auto" and an error from an explicit kernel backend.
ENGINE_LOSSES = frozenset({"info_nce", "nt_xent_loss", "clip_loss", "simcse_unsup_loss",
                           "simcse_sup_loss", "supcon_loss", "n_pair_loss", "siglip_loss",
                           "triplet_margin_loss", "contrastive_loss",
                           "multiple_negatives_ranking_loss"})


# "auto" on CUDA tensors: the first of these that can run. Triton leads until a GPU
# measurement (benchmarks/gpu_check.sh, recorded in benchmarks/RESULTS.md) shows the CUDA
# C++ engine faster; no GPU has been available to decide it yet.
CUDA_PREFERENCE = ("triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend is known but cannot run this loss on this input here."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton ships with CUDA torch wheels
        return False, f"triton is not importable: {exc}"
    return True, ""


def _triton_runs_on(device: torch.device) -> tuple[bool, str]:
    built, why = _triton_status()
    if not built:
        return False, why
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and _interpreting():
        return True, ""
    return False, (f"triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
                   f"got a {device.type} tensor")


def _build_info():
    try:
        from . import _build_info as info
    except ImportError:
        return None
    return info


EMULATE_ENV = "CONTRASTIVE_KERNELS_CUDA_EMULATE"


def cuda_emulated() -> bool:
    """Whether backend="cuda" means the CUDA C++ kernels compiled for the CPU emulator
    (CONTRASTIVE_KERNELS_CUDA_EMULATE=1, on CPU tensors: a test build, never "auto")."""
    return os.environ.get(EMULATE_ENV) == "1"


@functools.lru_cache(maxsize=None)
def _extension_status(backend: str) -> tuple[bool, str]:
    """(built, reason when not) for the C++ extension of a backend: ``_C_<backend>``, or
    ``_C_cuda_emu`` for "cuda" under emulation (read once, like TRITON_INTERPRET)."""
    name = "cuda_emu" if backend == "cuda" and cuda_emulated() else backend
    try:
        importlib.import_module(f"contrastive_kernels._C_{name}")
    except ImportError as exc:
        info = _build_info()
        if name == "cuda" and info is not None and not info.CUDA_BUILT:
            return False, f"the CUDA extension was not built: {info.CUDA_REASON}"
        if name == "cuda_emu" and info is not None and not getattr(info, "EMU_BUILT", False):
            return False, ("the CUDA emulation extension was not built: "
                           f"{getattr(info, 'EMU_REASON', 'an older install')}")
        if info is None:
            return False, ("the C++ extensions are not built: install with "
                           "`pip install --no-build-isolation -e .`")
        return False, f"contrastive_kernels._C_{name} does not import: {exc}"
    return True, ""


def _extension_runs_on(name: str, device: torch.device) -> tuple[bool, str]:
    built, why = _extension_status(name)
    if not built:
        return False, why
    if name == "cuda" and cuda_emulated():
        if device.type != "cpu":
            return False, (f"{EMULATE_ENV}=1: the emulated CUDA C++ backend takes CPU "
                           f"tensors; got {device.type}")
        return True, ""
    if device.type != name:
        return False, f"the {name!r} backend needs {name.upper()} tensors; got {device.type}"
    if name == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, ""


def cuda_archs() -> str:
    """The TORCH_CUDA_ARCH_LIST the CUDA extension was built for ('' when not built)."""
    info = _build_info()
    return info.CUDA_ARCHS if info is not None and info.CUDA_BUILT else ""


def backend_info() -> dict:
    """For each backend: {"built": bool, "available": bool, "reason": str}; the "cuda"
    entry also has "archs", the TORCH_CUDA_ARCH_LIST it was built for.

    "built" means the code for it is installed; "available" means it can run here (on this
    machine's default device: CUDA when present, else CPU); "reason" explains a False.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"torch": {"built": True, "available": True, "reason": ""}}
    t_built, t_why = _triton_status()
    t_ok, t_reason = _triton_runs_on(device) if t_built else (False, t_why)
    info["triton"] = {"built": t_built, "available": t_ok, "reason": t_reason}
    for name in ("cuda", "cpu"):
        built, why = _extension_status(name)
        where = torch.device("cpu" if name == "cuda" and cuda_emulated() else name)
        ok, reason = _extension_runs_on(name, where) if built else (False, why)
        info[name] = {"built": built, "available": ok, "reason": reason}
    info["cuda"]["archs"] = cuda_archs()  # TORCH_CUDA_ARCH_LIST of the build, "" if none
    info["cuda"]["emulated"] = cuda_emulated()
    if cuda_emulated() and info["cuda"]["available"]:
        info["cuda"]["reason"] = (f"emulated ({EMULATE_ENV}=1): the CUDA C++ kernels compiled "
                                  "for the CPU emulation of the CUDA execution model, on CPU "
                                  "tensors; for tests, never chosen by 'auto'")
    auto = _auto_backend(device)
    info["auto"] = {"built": True, "available": True,
                    "reason": f"resolves to {auto!r} for {device.type} tensors"}
    return info


def _auto_backend(device: torch.device) -> str:
    forced = os.environ.get(ENV_VAR)
    if forced:
        if forced not in BACKENDS or forced == "auto":
            raise ValueError(f"{ENV_VAR}={forced!r} is not one of {BACKENDS[1:]}")
        return forced
    if device.type == "cpu":
        # The interpreter is for tests only: auto never picks Triton for CPU tensors.
        return "cpu" if _extension_runs_on("cpu", device)[0] else "torch"
    if device.type == "cuda":
        for name in CUDA_PREFERENCE:
            ok = (_triton_runs_on(device) if name == "triton"
                  else _extension_runs_on(name, device))[0]
            if ok:
                return name
    return "torch"


def resolve(backend: str, device: torch.device, loss: str) -> str:
    """The concrete backend name for this loss on this device (validates ``backend``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    name = _auto_backend(device) if backend == "auto" else backend
    if name != "torch" and loss not in ENGINE_LOSSES:
        if backend == "auto" and not os.environ.get(ENV_VAR):
            return "torch"
        raise BackendUnavailableError(f"{loss} has no {name!r} kernel yet; use "
                                      f"backend='torch' (or 'auto')")
    return name


def select(backend: str, device: torch.device, loss: str) -> ModuleType | None:
    """The engine module for the chosen backend, or None for the PyTorch reference."""
    name = engine_name(backend, device.type, loss)
    if name == "torch":
        return None
    from .engines.library import engine
    return engine(name)


@torch.compiler.assume_constant_result
def engine_name(backend: str, device_type: str, loss: str) -> str:
    """The backend that computes ``loss`` on ``device_type`` tensors ("torch" for the
    reference), raising BackendUnavailableError when it cannot run here. Under
    torch.compile it runs once while tracing and its answer is a constant of the graph
    (the environment variable is read then)."""
    device = torch.device(device_type)
    name = resolve(backend, device, loss)
    if name == "torch":
        return name
    ok, why = (_triton_runs_on(device) if name == "triton"
               else _extension_runs_on(name, device))
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {why}")
    from .engines.library import engine
    engine(name)  # import it now, outside any traced code
    return name
