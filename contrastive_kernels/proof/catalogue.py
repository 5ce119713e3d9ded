"""Every Triton launch the launchers can make, recorded as a GPU would specialize it.

The AOT proof compiles what runs. Instead of hand-written signatures, it runs every engine
entry point (both softmax forward variants, every backward pass: rows or columns owned,
each gradient needed or not, deterministic, with and without extra log-sum-exps; the
pairwise engine's passes for both kinds; the mining and distance-strip kernels; the row
kernels) on small CPU tensors under the interpreter with
``CONTRASTIVE_KERNELS_LAUNCH_AS=sm_<arch>`` (the GPU tile tables and grid sizing), for
every input dtype and precision and for feature widths that reach every tile class both
16-aligned and not, and records each launch (``specialize.launch_recorder``). Each record
goes through Triton's own run-time specialization (types, divisibility hints, constant
1s) for the target, with the interpreter's half-precision upcast switched off as on a
GPU; launches that would share a binary are merged.

``record(arch)`` runs this in a fresh interpreter process (the interpreter flag must be set
before the kernels are defined); ``specs(arch)`` returns the deduplicated run-time specs.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import subprocess
import sys
import tempfile

import torch
from triton.backends.compiler import GPUTarget

from . import specialize

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Widths that reach every tile class of every table, 16-aligned (divisibility hints, the
# aligned sm_90 tiles) and not; D = 1 is its own binary (an int equal to 1 is a constant).
WIDTHS = (1, 15, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 320)
# (rows, other rows): rows-owned and columns-owned backwards (the side with fewer atomics
# owns blocks) and a skinny problem (64-row fitted blocks).
SHAPES = ((200, 300), (300, 200), (40, 600))


def _rand(n, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)


def _softmax_launches(dtype, d, n, m) -> None:
    from ..backends.triton import norms, softmax as te
    q, k = _rand(n, d, dtype, 1), _rand(m, d, dtype, 2)
    rq, rk = norms.inverse_norms(q, True), norms.inverse_norms(k, True)
    acc = rq.dtype
    scale = torch.tensor(5.0, dtype=acc)
    row_key, col_key = torch.arange(n), torch.arange(m)
    extra = torch.zeros(n, dtype=acc)
    # Column statistics, or up to MAX_EXTRA_LSE extra row log-sum-exps (never both).
    for need_col, n_extra in ((False, 0), (True, 0)) + tuple(
            (False, t) for t in range(1, te.MAX_EXTRA_LSE + 1)):
        xmul = torch.linspace(1.0, 0.5, n_extra, dtype=acc) if n_extra else None
        lse, pos, clse, xlse = te.forward(q, k, rq, rk, scale, row_key, col_key,
                                          None if need_col else extra, False, need_col, xmul)
        g = torch.ones(n, dtype=acc)
        g_clse = torch.ones(m, dtype=acc) if need_col else clse
        extras = dict(xmul=xmul, xlse=xlse, g_xlse=torch.ones_like(xlse)) if n_extra else {}
        for deterministic in (False, True):
            for need_dq, need_dk in ((True, True), (True, False), (False, True)):
                te.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g, g, g_clse,
                            False, True, deterministic, need_dq, need_dk, **extras)
        te.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g, g, g_clse, False,
                    False, False, **extras)


def _pairwise_launches(dtype, d, n) -> None:
    from ..backends.triton import norms, pairwise as tp
    q, k = _rand(n, d, dtype, 3), _rand(n, d, dtype, 4)
    rq, rk = norms.inverse_norms(q, True), norms.inverse_norms(k, True)
    params = torch.tensor([5.0, -1.0, 0.5], dtype=rq.dtype)
    keys = torch.arange(n) % 7
    for kind in (tp.SIGLIP, tp.HADSELL):
        tp.pair_forward(kind, q, k, rq, rk, params, keys, keys, False)
        for normalize, deterministic in ((True, False), (True, True), (False, False)):
            for need_dq, need_dk in ((True, True), (True, False), (False, True)):
                tp.pair_backward(kind, q, k, rq, rk, params, keys, keys,
                                 torch.ones_like(rq), False, normalize, True, deterministic,
                                 need_dq, need_dk)
    tp.hardest_pairs(q, rq, keys)
    if dtype in (torch.float32, torch.float64):  # strips of prepared (upcast) rows only
        tp.distance_strip(q, q.pow(2).sum(1), 3, n - 5)


def run_catalogue() -> None:
    """Every launch path at every dtype, precision, width and shape (in this process)."""
    for dtype in DTYPES:
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            for d in WIDTHS:
                for n, m in SHAPES:
                    _softmax_launches(dtype, d, n, m)
                _pairwise_launches(dtype, d, SHAPES[0][0])
    torch.backends.cuda.matmul.allow_tf32 = False


def run_public_losses() -> None:
    """An independent cross-check of the catalogue: every public loss, forward and
    backward, at odd shapes, widths and dtypes, with some inputs frozen."""
    import contrastive_kernels as ck
    for i, (dtype, d) in enumerate(((torch.bfloat16, 96), (torch.float16, 200),
                                    (torch.float32, 48), (torch.float64, 7),
                                    (torch.bfloat16, 1000))):
        x, y, z = (_rand(n, d, dtype, i + j).requires_grad_(j != 2)
                   for j, n in enumerate((70, 70, 333)))
        labels = torch.arange(70) % 5
        losses = (
            ck.info_nce(x, y, z, backend="triton"), ck.info_nce(x, y, backend="triton"),
            ck.nt_xent_loss(x, y, backend="triton"),
            ck.nt_xent_loss(x, y, tau_plus=0.1, beta=0.5, backend="triton"),
            ck.info_nce(x, y, z, tau_plus=0.1, backend="triton"),
            ck.clip_loss(x, y, 10.0, normalize=True, backend="triton"),
            ck.siglip_loss(x, y, 10.0, -10.0, backend="triton"),
            ck.supcon_loss(x, labels, backend="triton"),
            ck.triplet_margin_loss(x, labels, backend="triton"),
            ck.triplet_margin_loss(x, labels, mining="batch_all", backend="triton"),
            ck.triplet_margin_loss(x, labels, mining="semi_hard", backend="triton"),
            ck.contrastive_loss(x, labels, backend="triton"))
        for loss in losses:
            loss.backward()


def _gpu_launch(launch: specialize.Launch) -> specialize.Launch:
    """The launch as a GPU makes it: no interpreter upcast of half-precision operands."""
    if launch.args.get("UPCAST"):
        return dataclasses.replace(launch, args={**launch.args, "UPCAST": False})
    return launch


def _dump(path: str, run: str) -> None:
    module, name = run.split(":")
    fn = getattr(importlib.import_module(module), name)
    # Launch arguments depend on shapes and flags only, never on values: record without
    # running the kernels (the interpreter would take minutes for the whole catalogue).
    with specialize.launch_recorder(execute=False) as launches:
        fn()
    with open(path, "wb") as f:
        pickle.dump([_gpu_launch(x) for x in launches], f)


def record(arch: int, run: str = f"{__name__}:run_catalogue") -> list[specialize.Launch]:
    """The launches of ``run`` ("module:function"; default the whole catalogue) for
    sm_<arch>, recorded in a fresh interpreter process without executing the kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.pkl")
        env = dict(os.environ, TRITON_INTERPRET="1",
                   CONTRASTIVE_KERNELS_LAUNCH_AS=f"sm_{arch}")
        env.pop("CONTRASTIVE_KERNELS_POISON", None)
        code = f"from {__name__} import _dump; _dump({path!r}, {run!r})"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        with open(path, "rb") as f:
            return pickle.load(f)


def specs(arch: int, launches=None) -> list[specialize.RuntimeSpec]:
    """One run-time spec per distinct binary of the catalogue on sm_<arch>."""
    target = GPUTarget("cuda", arch, 32)
    launches = record(arch) if launches is None else launches
    return specialize.dedupe(specialize.runtime_specialization(x, target) for x in launches)
