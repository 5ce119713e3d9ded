"""Non-finite inputs propagate exactly as in the float64 reference, on every kernel backend.

The matrix: every loss × every input tensor (anchors, positives, keys, the bank, every row
of a SimCSE batch) × a first, a middle and the last row (so each lands in a different tile:
the sizes below span three tiles of the backend's tile table) × {NaN, +Inf, −Inf} in one
element, plus every scalar parameter (as a 0-dim tensor that requires grad) × {NaN, +Inf,
−Inf}; × reductions "none" and "mean". For each case the kernel backend and the reference
(``backend="torch"``, float64, same values) must agree on

- which output elements are finite (each row under "none", the loss otherwise);
- for every input, which gradient rows are finite (and for each scalar, whether its
  gradient is);
- or both raise the same error type (a NaN temperature is not > 0).

Random upstream gradients, so no row's weight is 1 by accident.
"""
from __future__ import annotations

import pytest
import torch

import contrastive_kernels as ck
from harness import DEVICE, KERNEL_BACKENDS, generator

# The interpreter's numpy reductions warn on the NaNs this file puts in on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# Rows per backend: three tiles of its tile table (interpreter 32, CUDA C++ 64, CPU 256).
ROWS = {"triton": 70 if DEVICE.type == "cpu" else 150, "cuda": 150, "cpu": 300}
D = 8
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


def _labels(n, gen):
    return torch.randint(0, max(1, n // 4), (n,), generator=gen).to(DEVICE)


# name -> (loss, tensor shapes from n, scalar parameters, fixed keyword arguments,
#          reductions). Shapes are (rows, D); a lambda of the labels' generator where needed.
def _cases():
    nk = lambda n: (2 * n + 5, D)  # noqa: E731  (the bank: its own length)
    return {
        "info_nce": (ck.info_nce, {"query": (1, D), "positive_key": (1, D)},
                     {"temperature": 0.1}, {}, ("none", "mean")),
        "info_nce_bank": (ck.info_nce, {"query": (1, D), "positive_key": (1, D),
                                        "negative_keys": nk},
                          {"temperature": 0.1}, {}, ("none", "mean")),
        "nt_xent_loss": (ck.nt_xent_loss, {"z1": (0.5, D), "z2": (0.5, D)},
                         {"temperature": 0.2}, {}, ("none", "mean")),
        "nt_xent_estimator": (ck.nt_xent_loss, {"z1": (0.5, D), "z2": (0.5, D)},
                              {"temperature": 0.2}, {"tau_plus": 0.1, "beta": 0.5},
                              ("none", "mean")),
        "info_nce_bank_estimator": (ck.info_nce, {"query": (1, D), "positive_key": (1, D),
                                                  "negative_keys": nk},
                                    {"temperature": 0.1}, {"tau_plus": 0.1, "beta": 1.0},
                                    ("none", "mean")),
        "clip_loss": (ck.clip_loss, {"image_features": (1, D), "text_features": (1, D)},
                      {"logit_scale": 3.0}, {}, ("none", "mean")),
        "clip_loss_normalized": (ck.clip_loss, {"image_features": (1, D),
                                                "text_features": (1, D)},
                                 {"logit_scale": 10.0}, {"normalize": True},
                                 ("none", "mean")),
        "siglip_loss": (ck.siglip_loss, {"image_features": (1, D), "text_features": (1, D)},
                        {"logit_scale": 10.0, "logit_bias": -10.0}, {"normalize": True},
                        ("none", "mean")),
        "simcse_unsup_loss": (ck.simcse_unsup_loss, {"y_pred": (1, D)}, {"lamda": 0.05},
                              {}, ("none", "mean")),
        "simcse_sup_loss": (ck.simcse_sup_loss, {"y_pred": (1.5, D)}, {"lamda": 0.05}, {},
                            ("none", "mean")),
        "supcon_loss": (ck.supcon_loss, {"features": (1, D)},
                        {"temperature": 0.1, "base_temperature": 0.07}, {"labels": "labels"},
                        ("none", "mean")),
        "n_pair_loss": (ck.n_pair_loss, {"anchors": (1, D), "positives": (1, D)},
                        {"l2_reg": 0.01}, {}, ("none", "mean")),
        "triplet_margin_loss": (ck.triplet_margin_loss, {"embeddings": (1, D)},
                                {"margin": 0.2}, {"labels": "labels"}, ("none", "mean")),
        "triplet_batch_all": (ck.triplet_margin_loss, {"embeddings": (1, D)},
                              {"margin": 0.2}, {"labels": "labels", "mining": "batch_all"},
                              ("none", "mean")),
        "triplet_semi_hard": (ck.triplet_margin_loss, {"embeddings": (1, D)},
                              {"margin": 0.2}, {"labels": "labels", "mining": "semi_hard"},
                              ("none", "mean")),
        "contrastive_loss": (ck.contrastive_loss, {"embeddings": (1, D)}, {"margin": 1.0},
                             {"labels": "labels"}, ("none", "mean")),
    }


CASES = _cases()


def _shape(spec, n):
    if callable(spec):
        return spec(n)
    rows, d = spec
    return (max(2, int(rows * n)) if rows != 1 else n, d)


def _positions(name: str):
    """(input, row or None for a scalar) of every poisoned position of a loss."""
    _fn, tensors, scalars, _kw, _red = CASES[name]
    out = [(t, r) for t in tensors for r in ("first", "middle", "last")]
    return out + [(s, None) for s in scalars]


MATRIX = [(name, inp, row, value, reduction)
          for name in CASES for inp, row in _positions(name) for value in VALUES
          for reduction in CASES[name][4]]


def _row_index(row: str, rows: int) -> int:
    return {"first": 0, "middle": rows // 2, "last": rows - 1}[row]


def _run(name, backend, n, dtype, poison, reduction):
    """(loss, {input: grad}) or the exception the call raised."""
    fn, tensors, scalars, fixed, _ = CASES[name]
    gen = generator("nonfinite", name, n)
    leaves = {}
    for key, spec in tensors.items():
        leaves[key] = torch.randn(_shape(spec, n), generator=gen,
                                  dtype=torch.float64).to(DEVICE, dtype)
    for key, value in scalars.items():
        leaves[key] = torch.tensor(value, dtype=torch.float64, device=DEVICE)
    labels = _labels(leaves[next(iter(tensors))].shape[0], gen)
    inp, row, value = poison
    target = leaves[inp]
    if row is None:
        target.fill_(value)
    else:
        i = _row_index(row, target.shape[0])
        target[i, (7 * i) % target.shape[1]] = value
    for leaf in leaves.values():
        leaf.requires_grad_(True)
    kwargs = {k: (labels if v == "labels" else v) for k, v in fixed.items()}
    upstream_gen = generator("nonfinite-upstream", name, n, reduction)
    try:
        out = fn(**leaves, **kwargs, reduction=reduction, backend=backend)
        upstream = torch.randn(out.shape, generator=upstream_gen, dtype=torch.float64)
        grads = torch.autograd.grad(out, list(leaves.values()),
                                    upstream.to(DEVICE, out.dtype), allow_unused=True)
    except (ValueError, TypeError) as exc:
        return exc
    return out.detach(), dict(zip(leaves, grads))


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return torch.isfinite(t) if t.dim() <= 1 else torch.isfinite(t).flatten(1).all(1)


def check_nonfinite(name, backend, row, inp, value, reduction, dtype=torch.float32):
    n = ROWS[backend]
    poison = (inp, row, VALUES[value])
    got = _run(name, backend, n, dtype, poison, reduction)
    want = _run(name, "torch", n, torch.float64, poison, reduction)
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want), f"reference: {want!r}; {backend}: {got!r}"
        return
    (out, grads), (ref, ref_grads) = got, want
    same = torch.equal(_finite_rows(out).cpu(), _finite_rows(ref).cpu())
    assert same, (f"finite loss rows differ: {backend} {_finite_rows(out).tolist()} vs "
                  f"reference {_finite_rows(ref).tolist()}")
    for key, ref_grad in ref_grads.items():
        grad = grads[key]
        if ref_grad is None:
            assert grad is None or not grad.any(), f"d{key}: reference has none"
            continue
        assert grad is not None, f"d{key}: {backend} returned no gradient"
        mine, theirs = _finite_rows(grad).cpu(), _finite_rows(ref_grad).cpu()
        same = torch.equal(mine, theirs)
        assert same, (
            f"d{key}: rows finite on {backend} but not in the reference: "
            f"{(mine & ~theirs).nonzero().flatten().tolist()}; the other way: "
            f"{(~mine & theirs).nonzero().flatten().tolist()}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name,inp,row,value,reduction", MATRIX)
def test_nonfinite_matches_reference(name, inp, row, value, reduction, backend):
    check_nonfinite(name, backend, row, inp, value, reduction)


def test_the_matrix_covers_every_input_of_every_loss():
    """Every tensor argument of every loss (and each scalar) is poisoned at three rows."""
    assert {CASES[c][0].__name__ for c in CASES} == {
        "info_nce", "nt_xent_loss", "clip_loss", "siglip_loss", "simcse_unsup_loss",
        "simcse_sup_loss", "supcon_loss", "n_pair_loss", "triplet_margin_loss",
        "contrastive_loss"}
    for name in CASES:
        rows = {r for _, inp, r, _, _ in [m[:5] for m in MATRIX if m[0] == name]}
        assert {"first", "middle", "last"} <= rows


def test_the_issue_example_a_nan_in_a_moco_bank_row():
    q = torch.randn(8, 16, requires_grad=True)
    p = torch.randn(8, 16)
    bank = torch.randn(32, 16)
    bank[5, 3] = float("nan")
    for backend in ["torch"] + [b for b in KERNEL_BACKENDS if DEVICE.type == "cpu"]:
        assert torch.isnan(ck.info_nce(q, p, negative_keys=bank, backend=backend))
