"""The C++ CPU engine's own contract, beyond the per-loss suite that runs on it: argument
checks at the C++ boundary, both backward strategies, and reproducibility."""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import dispatch
from harness import LossCase, compare, generator, randn

pytestmark = pytest.mark.skipif(not dispatch.backend_info()["cpu"]["available"],
                                reason="the C++ CPU extension is not built")


def _engine():
    from contrastive_kernels.backends import cpu as cpu_engine
    return cpu_engine


def _args(n=6, m=5, d=3, dtype=torch.float32):
    gen = generator("cpu-engine", n, m, d)
    q, k = randn((n, d), gen, dtype), randn((m, d), gen, dtype)
    e = _engine()
    return [q, k, e.inverse_norms(q, True), e.inverse_norms(k, True),
            torch.tensor(2.0), torch.arange(n), torch.arange(m), None, False, False]


@pytest.mark.parametrize("position,bad,message", [
    (0, torch.zeros(6, 3, dtype=torch.int32), "q must be float32"),
    (0, torch.zeros(6, 3, 2), "q must be 2-D"),
    (1, torch.zeros(3, 5).t(), "k must be contiguous"),
    (2, torch.zeros(5), "rq must have shape"),
    (3, torch.zeros(5, dtype=torch.float64), "rk must be Float"),
    (5, torch.zeros(6, dtype=torch.int32), "row_key must be Long"),
    (6, torch.zeros(4, dtype=torch.int64), "col_key must have shape"),
])
def test_cpp_boundary_names_the_bad_argument(position, bad, message):
    args = _args()
    args[position] = bad
    with pytest.raises(RuntimeError, match=message):
        _engine()._ext.forward(*args, 64, 64)


def test_mask_diag_needs_square_problem():
    args = _args(n=6, m=5)
    args[8] = True
    with pytest.raises(RuntimeError, match="mask_diag"):
        _engine()._ext.forward(*args, 64, 64)


@pytest.mark.parametrize("tiles", [(1, 1), (7, 3), (256, 256)])
def test_tile_shape_does_not_change_the_result(tiles, monkeypatch):
    """Ragged tiles of any shape, including 1×1, give the fp64 reference's values."""
    engine = _engine()
    monkeypatch.setitem(engine._TILES, torch.float32, tiles)
    case = LossCase(lambda a, b, **kw: ck.clip_loss(a, b, 3.0, normalize=True, **kw),
                    lambda n, d, dt, g: ([randn((n, d), g, dt), randn((n, d), g, dt)], {}))
    compare(case, "cpu", 37, 9, torch.float32, "none", generator("tiles", tiles))


@pytest.mark.parametrize("loss", ["clip", "supcon"])
def test_column_pass_backward_matches(loss, monkeypatch):
    """The backward without per-thread dK̂ partials (a second pass over column blocks, used
    when partials would be large) is exercised by forcing the threshold to zero."""
    engine = _engine()
    monkeypatch.setattr(engine, "MAX_PARTIAL_ELEMENTS", 0)
    monkeypatch.setitem(engine._TILES, torch.float32, (8, 16))
    if loss == "clip":
        case = LossCase(lambda a, b, **kw: ck.clip_loss(a, b, 3.0, **kw),
                        lambda n, d, dt, g: ([randn((n, d), g, dt), randn((n, d), g, dt)], {}))
    else:
        case = LossCase(lambda a, **kw: ck.supcon_loss(a, torch.arange(a.shape[0]) % 4, **kw),
                        lambda n, d, dt, g: ([randn((n, d), g, dt)], {}))
    prior = torch.get_num_threads()
    torch.set_num_threads(2)  # more than one row partition, or the fallback never triggers
    try:
        compare(case, "cpu", 45, 6, torch.float32, "none", generator("colpass", loss))
    finally:
        torch.set_num_threads(prior)


def test_gradients_bitwise_reproducible_for_a_thread_count():
    gen = generator("repro")
    x, y = randn((300, 16), gen), randn((300, 16), gen)
    grads = []
    for _ in range(2):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        ck.clip_loss(a, b, 5.0, backend="cpu").backward()
        grads.append((a.grad, b.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_auto_picks_the_cpu_engine_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.resolve("auto", torch.device("cpu"), "clip_loss") == "cpu"


def test_aten_product_fallback_matches():
    """Where torch exports no Fortran sgemm_/dgemm_, tile products go through at::mm on
    views of the same memory: forced here, it must give the reference's values too."""
    ext = _engine()._ext
    ext._force_aten_products(True)
    try:
        assert not ext.have_fortran_blas()
        case = LossCase(lambda a, b, **kw: ck.clip_loss(a, b, 3.0, normalize=True, **kw),
                        lambda n, d, dt, g: ([randn((n, d), g, dt), randn((n, d), g, dt)], {}))
        for dtype in (torch.float32, torch.float64):
            compare(case, "cpu", 70, 9, dtype, "none", generator("aten-blas", dtype))
    finally:
        ext._force_aten_products(False)


# ----------------------------------------------------------------------------------------
# The pairwise engine (SigLIP, Hadsell, batch-hard mining) on the same machinery
# ----------------------------------------------------------------------------------------
def _pair_args(n=6, m=5, d=3):
    gen = generator("cpu-pair", n, m, d)
    q, k = randn((n, d), gen), randn((m, d), gen)
    return [0, q, k, torch.ones(n), torch.ones(m), torch.tensor([2.0, -1.0, 0.5]),
            torch.arange(n), torch.arange(m), False]


@pytest.mark.parametrize("position,bad,message", [
    (0, 7, "kind must be"),
    (1, torch.zeros(6, 3, dtype=torch.int32), "q must be float32"),
    (2, torch.zeros(5, 4), "q and k must share D"),
    (3, torch.zeros(5), "rq must have shape"),
    (5, torch.zeros(2), "params must have shape"),
    (5, torch.zeros(3, dtype=torch.float64), "params must be Float"),
    (7, torch.zeros(5, dtype=torch.int32), "col_key must be Long"),
])
def test_pair_boundary_names_the_bad_argument(position, bad, message):
    args = _pair_args()
    args[position] = bad
    with pytest.raises(RuntimeError, match=message):
        _engine()._ext.pair_forward(*args, 64, 64)


def test_pair_backward_checks_upstream_and_mining_checks_keys():
    args = _pair_args()
    with pytest.raises(RuntimeError, match="g_row must have shape"):
        _engine()._ext.pair_backward(*args[:8], torch.ones(5), False, False, True, 64, 64,
                                     1 << 20)
    x = randn((4, 3), generator("cpu-pair", "mine"))
    with pytest.raises(RuntimeError, match="key must have shape"):
        _engine()._ext.hardest_pairs(x, torch.ones(4), torch.arange(3), 64, 64)


_PAIR_CASES = {
    "siglip": LossCase(lambda a, b, **kw: ck.siglip_loss(a, b, 3.0, -1.0, normalize=True, **kw),
                       lambda n, d, dt, g: ([randn((n, d), g, dt), randn((n, d), g, dt)], {})),
    "contrastive": LossCase(
        lambda a, **kw: ck.contrastive_loss(a, torch.arange(a.shape[0]) % 4, 2.5, **kw),
        lambda n, d, dt, g: ([randn((n, d), g, dt)], {})),
    "triplet": LossCase(
        lambda a, **kw: ck.triplet_margin_loss(a, torch.arange(a.shape[0]) % 4, 0.5, **kw),
        lambda n, d, dt, g: ([randn((n, d), g, dt)], {})),
}


@pytest.mark.parametrize("loss", list(_PAIR_CASES))
@pytest.mark.parametrize("tiles", [(1, 1), (7, 3)])
def test_pair_tile_shape_does_not_change_the_result(loss, tiles, monkeypatch):
    monkeypatch.setitem(_engine()._TILES, torch.float32, tiles)
    compare(_PAIR_CASES[loss], "cpu", 29, 5, torch.float32, "none",
            generator("pair-tiles", loss, tiles))


@pytest.mark.parametrize("loss", ["siglip", "contrastive"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pair_column_pass_backward_matches(loss, reduction, monkeypatch):
    """Without per-thread dK̂ / column-sum partials (the column-block second pass), both
    the fused (mean) and the recomputing (none) backward give the reference's gradients."""
    engine = _engine()
    monkeypatch.setattr(engine, "MAX_PARTIAL_ELEMENTS", 0)
    monkeypatch.setitem(engine._TILES, torch.float32, (8, 16))
    prior = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compare(_PAIR_CASES[loss], "cpu", 45, 6, torch.float32, reduction,
                generator("pair-colpass", loss, reduction))
    finally:
        torch.set_num_threads(prior)


def test_pair_aten_product_fallback_matches():
    ext = _engine()._ext
    ext._force_aten_products(True)
    try:
        for loss, case in _PAIR_CASES.items():
            compare(case, "cpu", 40, 9, torch.float64, "none", generator("pair-aten", loss))
    finally:
        ext._force_aten_products(False)


def test_pair_gradients_bitwise_reproducible():
    gen = generator("pair-repro")
    x = randn((300, 16), gen)
    grads = []
    for _ in range(2):
        a = x.clone().requires_grad_()
        ck.contrastive_loss(a, torch.arange(300) % 9, 5.0, reduction="none",
                            backend="cpu").sum().backward()
        grads.append(a.grad)
    assert torch.equal(grads[0], grads[1])
