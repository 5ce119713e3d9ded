"""The extra log-sum-exps over each row's negatives in the C++ engines, called through the
backend wrappers directly (backends/cpu.py, backends/cuda.py):

    xlse[t, i] = log Σ_{j valid, row_key_i != col_key_j} exp(xmul[t] · S_ij)

(-inf for a row without negatives; the extra logit does not join them), and the backward's
dS terms xmul[t]·g_xlse[t, i]·exp(xmul[t]·S_ij − xlse[t, i]) on those pairs.

Backends: "cpu" (the C++ CPU engine, with small tiles so that every problem has several row
and column tiles, and the column-pass backward), "cuda-emu" (the CUDA C++ kernels executed by
the CPU emulation of the CUDA execution model, _C_cuda_emu; column splits forced with
CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES=1) and "cuda" on a real GPU. Each is compared with a
float64 PyTorch reference built from the dense logit matrix: its loss-like scalar
Σ g_lse·lse + Σ g_pos·pos [+ Σ g_clse·clse] + Σ_t Σ_i g_xlse[t,i]·xlse[t,i], differentiated by
autograd, gives the expected dq, dk and dscale.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import zlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from contrastive_kernels.testing import relative_error, tolerance

EMULATE_ENV = "CONTRASTIVE_KERNELS_CUDA_EMULATE"
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _env(name, value):
    prior = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if prior is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = prior


def _emulated_cuda_module():
    """backends/cuda.py bound to _C_cuda_emu, or the reason it is unavailable. The module picks
    its extension from the environment when imported, so a private copy is loaded with the
    variable set: this file then runs in any pytest process."""
    try:
        importlib.import_module("contrastive_kernels._C_cuda_emu")
    except ImportError as exc:
        return None, f"the CUDA emulation extension does not import: {exc}"
    origin = importlib.util.find_spec("contrastive_kernels.backends.cuda").origin
    spec = importlib.util.spec_from_file_location(
        "contrastive_kernels.backends._cuda_emulated_for_tests", origin)
    module = importlib.util.module_from_spec(spec)
    with _env(EMULATE_ENV, "1"):
        spec.loader.exec_module(module)
    assert module.EMULATED
    return module, ""


def _gpu_cuda_module():
    if not torch.cuda.is_available() or os.environ.get(EMULATE_ENV) == "1":
        return None, "needs a CUDA device"
    try:
        from contrastive_kernels.backends import cuda
    except ImportError as exc:
        return None, f"the CUDA extension does not import: {exc}"
    return cuda, ""


@dataclass
class Backend:
    name: str
    engine: object
    device: torch.device


@pytest.fixture(params=["cpu", "cuda-emu", "cuda"])
def backend(request, monkeypatch):
    name = request.param
    if name == "cpu":
        from contrastive_kernels.backends import cpu as engine
        # Small tiles: several row blocks and column tiles at these sizes.
        for dt in (torch.float32, torch.float64):
            monkeypatch.setitem(engine._TILES, dt, (16, 8))
        prior = torch.get_num_threads()
        torch.set_num_threads(2)  # more than one row partition
        request.addfinalizer(lambda: torch.set_num_threads(prior))
        return Backend(name, engine, torch.device("cpu"))
    engine, why = _emulated_cuda_module() if name == "cuda-emu" else _gpu_cuda_module()
    if engine is None:
        pytest.skip(why)
    # Column splits from two tiles on (the merged split partials).
    monkeypatch.setenv("CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES", "1")
    return Backend(name, engine, torch.device("cuda" if name == "cuda" else "cpu"))


def _paths(backend, monkeypatch, deterministic):
    """The CPU engine is deterministic on every path; there `deterministic` selects its other
    dK̂ strategy instead (the column-block second pass, no per-partition partials)."""
    if backend.name == "cpu" and deterministic:
        monkeypatch.setattr(backend.engine, "MAX_PARTIAL_ELEMENTS", 0)


# ----------------------------------------------------------------------------------------
# Problems and the dense reference
# ----------------------------------------------------------------------------------------
@dataclass
class Case:
    n: int
    m: int
    d: int
    keys: tuple  # (row classes, column classes), or "half_empty"
    xmul: tuple
    key_shift: int = 0  # row i gets column i + key_shift's key (1: the diagonal is a negative)
    mask_diag: bool = False
    shared: bool = False  # k is q
    normalize: bool = True
    extra: bool = False
    need_col: bool = False
    scale: float = 3.0


CASES = {
    # Several positives per row, an extra logit (not among the negatives), T = 2.
    "several_matches": Case(37, 53, 19, (5, 5), (1.5, 0.5), extra=True),
    # q is k, the diagonal masked, unnormalized, a column lse; T = 1 with multiplier 0.
    "shared_masked": Case(70, 70, 130, (4, 4), (0.0,), mask_diag=True, shared=True,
                          normalize=False, need_col=True, scale=0.25),
    # Many column tiles: column splits on CUDA, several CPU partitions. The masked diagonal
    # pairs have different keys, so the mask (not the keys) keeps them out of the negatives
    # (with multiplier 0 a wrongly included masked logit would give 0·(-inf) = NaN).
    "splits": Case(37, 203, 130, (7, 7), (2.0, 0.0), key_shift=1, mask_diag=True),
    # Every column has one key: rows with that key have no negative (-inf, no gradient),
    # the others have every column.
    "half_empty": Case(37, 53, 19, "half_empty", (1.5, 0.5)),
}


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gen(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _keys(case):
    if case.keys == "half_empty":
        return torch.arange(case.n) % 2, torch.zeros(case.m, dtype=torch.long)
    return ((torch.arange(case.n) + case.key_shift) % case.keys[0],
            torch.arange(case.m) % case.keys[1])


def _inputs(case, dtype, device, gen):
    """Engine inputs: q, k (k is q when shared), keys, extra, scale, xmul."""
    q = torch.randn(case.n, case.d, generator=gen, dtype=torch.float64)
    k = q if case.shared else torch.randn(case.m, case.d, generator=gen, dtype=torch.float64)
    q = q.to(device, dtype)
    k = q if case.shared else k.to(device, dtype)
    row_key, col_key = (x.to(device) for x in _keys(case))
    acc = _acc(dtype)
    extra = (torch.randn(case.n, generator=gen, dtype=torch.float64).to(device, acc)
             if case.extra else None)
    scale = torch.tensor(case.scale, dtype=acc, device=device)
    xmul = torch.tensor(case.xmul, dtype=acc, device=device) if case.xmul else None
    return q, k, row_key, col_key, extra, scale, xmul


def _upstream(case, acc, device, gen, t):
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, acc)
    g_clse = r(case.m) if case.need_col else torch.zeros(0, dtype=acc, device=device)
    return r(case.n), r(case.n), g_clse, r(t, case.n)


def reference(case, q, k, row_key, col_key, extra, scale, xmul, grads=None):
    """The float64 statistics (lse, pos, clse, xlse) from the dense logits; with upstream
    grads = (g_lse, g_pos, g_clse, g_xlse) also d(Σ g·statistic)/d(q, k, scale)."""
    q64 = q.detach().double().cpu().requires_grad_()
    k64 = q64 if case.shared else k.detach().double().cpu().requires_grad_()
    s64 = scale.detach().double().cpu().requires_grad_()
    qh = F.normalize(q64, dim=1) if case.normalize else q64
    kh = F.normalize(k64, dim=1) if case.normalize else k64
    S = s64 * qh @ kh.T
    n, m = S.shape
    valid = torch.ones(n, m, dtype=torch.bool)
    if case.mask_diag:
        valid[torch.arange(n), torch.arange(n)] = False
    match = row_key.cpu()[:, None] == col_key.cpu()[None, :]
    rows = torch.where(valid, S, -torch.inf)
    if extra is not None:
        rows = torch.cat([rows, extra.double().cpu()[:, None]], 1)
    lse = torch.logsumexp(rows, 1)
    pos = torch.where(valid & match, S, 0.0).sum(1)
    clse = torch.logsumexp(torch.where(valid, S, -torch.inf), 0) if case.need_col else None
    neg = valid & ~match
    has = neg.any(1)
    xlse = []
    for mul in (xmul.double().cpu() if xmul is not None else []):
        # Rows without negatives: a constant input, so that autograd gets no 0·NaN.
        z = torch.where(has[:, None], torch.where(neg, mul * S, -torch.inf), 0.0)
        xlse.append(torch.where(has, torch.logsumexp(z, 1), -torch.inf))
    xlse = torch.stack(xlse) if xlse else S.new_zeros(0, n)
    stats = (lse, pos, clse, xlse)
    if grads is None:
        return stats, None
    g_lse, g_pos, g_clse, g_xlse = (g.double().cpu() for g in grads)
    terms = [g_lse * lse, g_pos * pos, torch.where(has, g_xlse * xlse, 0.0)]
    if case.need_col:
        terms.append(g_clse * clse)
    loss = sum(t.sum() for t in terms)
    loss.backward()
    scale_of_dscale = float(sum(t.detach().abs().sum() for t in terms))
    dq = q64.grad
    dk = None if case.shared else k64.grad
    return stats, (dq, dk, s64.grad, scale_of_dscale)


def _close(actual, expected, dtype, what, floor=1e-30):
    err = relative_error(actual.cpu(), expected, floor)
    tol = tolerance(dtype)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def _run(backend, case, dtype, deterministic, key, need_dq=True, need_dk=True):
    """Engine forward and backward vs the reference, every output compared."""
    dev = backend.device
    gen = _gen(key, dtype)
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, dtype, dev, gen)
    e = backend.engine
    rq = e.inverse_norms(q, case.normalize)
    rk = rq if case.shared else e.inverse_norms(k, case.normalize)
    lse, pos, clse, xlse = e.forward(q, k, rq, rk, scale, row_key, col_key, extra,
                                     case.mask_diag, case.need_col, xmul)
    acc = _acc(dtype)
    grads = _upstream(case, acc, dev, gen, len(case.xmul))
    (r_lse, r_pos, r_clse, r_xlse), (r_dq, r_dk, r_dscale, dscale_floor) = reference(
        case, q, k, row_key, col_key, extra, scale, xmul, grads)
    assert xlse.shape == (len(case.xmul), case.n) and xlse.dtype == acc
    _close(xlse, r_xlse, dtype, "xlse")
    _close(lse, r_lse, dtype, "lse")
    _close(pos, r_pos, dtype, "pos", float(r_pos.detach().abs().sum()))
    if case.need_col:
        _close(clse, r_clse, dtype, "clse")
    g_lse, g_pos, g_clse, g_xlse = grads
    dq, dk, dscale = e.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos,
                                g_clse, case.mask_diag, case.normalize, deterministic,
                                need_dq, need_dk, xmul, xlse, g_xlse)
    _close(dscale, r_dscale, dtype, "dscale", dscale_floor)
    if case.shared:  # dq and dk are the two uses of one tensor
        _close(dq.double() + dk.double(), r_dq, dtype, "dq + dk (k is q)")
        return
    assert dq.shape == ((case.n if need_dq else 0), case.d) and dq.dtype == dtype
    assert dk.shape == ((case.m if need_dk else 0), case.d) and dk.dtype == dtype
    if need_dq:
        _close(dq, r_dq, dtype, "dq")
    if need_dk:
        _close(dk, r_dk, dtype, "dk")


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_dense_reference(backend, case, dtype, deterministic, monkeypatch):
    _paths(backend, monkeypatch, deterministic)
    _run(backend, CASES[case], dtype, deterministic, ("ref", case, deterministic))


@pytest.mark.parametrize("need", [(False, True), (True, False)], ids=["dk_only", "dq_only"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_one_gradient_only(backend, need, dtype):
    """need_dq=False (CUDA: the transposed pass alone, the statistics loaded per column
    tile) and need_dk=False (the row pass alone)."""
    _run(backend, CASES["splits"], dtype, False, ("need", need), *need)


def test_many_column_tiles_blocked_sums(backend, monkeypatch):
    """More column tiles than one group of the blocked sums (kGroup = 32) in one range, so
    the extra log-sum-exps' groups are folded into their totals more than once."""
    if backend.name == "cpu":
        monkeypatch.setitem(backend.engine._TILES, torch.float64, (16, 1))
        case = Case(37, 75, 19, (5, 5), (1.5, 0.5), mask_diag=True)
    else:  # fp64 tiles are 32 wide; one split
        monkeypatch.setenv("CONTRASTIVE_KERNELS_CUDA_SPLIT_MIN_TILES", "100000")
        case = Case(37, 1100, 19, (5, 5), (1.5, 0.5), mask_diag=True)
    _run(backend, case, torch.float64, True, ("groups",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_extras_leave_the_other_statistics_alone(backend, dtype):
    """Without xmul, xlse is (0, N); with it, lse, pos and clse are bitwise the same."""
    case = CASES["shared_masked"]
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, dtype, backend.device,
                                                         _gen("same", dtype))
    e = backend.engine
    rq = e.inverse_norms(q, case.normalize)
    args = (q, k, rq, rq, scale, row_key, col_key, extra, case.mask_diag, True)
    plain = e.forward(*args)
    with_x = e.forward(*args, torch.tensor([0.5, 1.5], dtype=_acc(dtype), device=q.device))
    assert plain[3].shape == (0, case.n) and with_x[3].shape == (2, case.n)
    for a, b in zip(plain[:3], with_x[:3]):
        assert torch.equal(a, b)


def test_rows_without_negatives_get_no_gradient(backend):
    """All keys equal: every xlse is -inf and any g_xlse adds nothing (bitwise)."""
    case = Case(37, 53, 19, (1, 1), (1.5, 0.5), mask_diag=True)
    dev = backend.device
    gen = _gen("empty")
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, torch.float32, dev, gen)
    e = backend.engine
    rq, rk = e.inverse_norms(q, True), e.inverse_norms(k, True)
    lse, pos, clse, xlse = e.forward(q, k, rq, rk, scale, row_key, col_key, None, True, False,
                                     xmul)
    assert torch.equal(xlse, torch.full_like(xlse, -torch.inf))
    g_lse, g_pos, g_clse, g_xlse = _upstream(case, torch.float32, dev, gen, 2)
    common = (q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse, True,
              True, True)
    with_x = e.backward(*common, True, True, xmul, xlse, g_xlse)
    without = e.backward(*common)
    for a, b in zip(with_x, without):
        assert torch.equal(a, b)


def test_no_rows_or_no_columns(backend):
    """N = 0: xlse is (T, 0); M = 0: every xlse is -inf, and the backward is zero."""
    dev, e = backend.device, backend.engine
    xmul = torch.tensor([1.5, 0.5], device=dev)
    scale = torch.tensor(2.0, device=dev)
    for n, m in ((0, 5), (5, 0)):
        q, k = torch.randn(n, 4, device=dev), torch.randn(m, 4, device=dev)
        rq, rk = e.inverse_norms(q, True), e.inverse_norms(k, True)
        keys = (torch.arange(n, device=dev), torch.arange(m, device=dev))
        lse, pos, clse, xlse = e.forward(q, k, rq, rk, scale, *keys, None, False, False, xmul)
        assert xlse.shape == (2, n)
        assert torch.equal(xlse, torch.full((2, n), -torch.inf, device=dev))
        g = torch.ones(n, device=dev)
        dq, dk, dscale = e.backward(q, k, rq, rk, scale, *keys, lse, clse, g, g, clse, False,
                                    True, True, True, True, xmul, xlse, torch.ones_like(xlse))
        assert not dq.any() and not dk.any() and float(dscale) == 0.0


@pytest.mark.parametrize("where", ["q", "k"])
def test_nan_reaches_the_rows_that_see_it(backend, where):
    """A NaN feature in one row: every xlse whose negatives include it is NaN, the others are
    the reference's values (a NaN positive stays out of the negatives' statistic)."""
    case = CASES["several_matches"]
    dev = backend.device
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, torch.float32, dev,
                                                         _gen("nan", where))
    bad = 6
    (q if where == "q" else k)[bad, 1] = float("nan")
    e = backend.engine
    rq, rk = e.inverse_norms(q, True), e.inverse_norms(k, True)
    xlse = e.forward(q, k, rq, rk, scale, row_key, col_key, extra, False, False, xmul)[3]
    neg = row_key.cpu()[:, None] != col_key.cpu()[None, :]
    if where == "q":
        sees = torch.zeros(case.n, dtype=torch.bool)
        sees[bad] = neg[bad].any()
    else:
        sees = neg[:, bad]
    assert sees.any() and not sees.all()
    for t in range(len(case.xmul)):
        assert torch.equal(torch.isnan(xlse[t].cpu()), sees), t
    (_, _, _, r_xlse), _ = reference(case, q, k, row_key, col_key, extra, scale, xmul)
    _close(xlse, r_xlse, torch.float32, "xlse")


def test_arguments_are_checked_naming_them(backend):
    case = CASES["several_matches"]
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, torch.float32, backend.device,
                                                         _gen("checks"))
    e = backend.engine
    rq, rk = e.inverse_norms(q, True), e.inverse_norms(k, True)
    fwd = (q, k, rq, rk, scale, row_key, col_key, None, False, False)
    with pytest.raises(RuntimeError, match=r"xmul must have shape \(T,\) with 1 <= T <= 2"):
        e.forward(*fwd, torch.ones(3, device=q.device))
    with pytest.raises(RuntimeError, match="xmul must be Float"):
        e.forward(*fwd, torch.ones(2, dtype=torch.float64, device=q.device))
    lse, pos, clse, xlse = e.forward(*fwd, xmul)
    g = torch.ones(case.n, device=q.device)
    bwd = (q, k, rq, rk, scale, row_key, col_key, lse, clse, g, g, clse, False, True, True,
           True, True)
    with pytest.raises(RuntimeError, match=r"xlse must have shape \(2, 37\)"):
        e.backward(*bwd, xmul, xlse[:1], torch.ones_like(xlse))
    with pytest.raises(RuntimeError, match="g_xlse is required"):
        e.backward(*bwd, xmul, xlse, None)
    with pytest.raises(RuntimeError, match="g_xlse must be Float"):
        e.backward(*bwd, xmul, xlse, torch.ones_like(xlse, dtype=torch.float64))


def test_emulated_launches_split_the_columns(backend):
    """The cuda-emu cases above do run column splits (merged by merge_rows_kernel) and both
    backward passes: read back from the emulator's per-launch records."""
    if backend.name != "cuda-emu":
        pytest.skip("reads the emulation build's launch records")
    case = CASES["splits"]
    q, k, row_key, col_key, extra, scale, xmul = _inputs(case, torch.float32, backend.device,
                                                         _gen("launches"))
    e = backend.engine
    rq, rk = e.inverse_norms(q, True), e.inverse_norms(k, True)
    token = e._ext.traffic_begin()
    lse, pos, clse, xlse = e.forward(q, k, rq, rk, scale, row_key, col_key, None,
                                     case.mask_diag, False, xmul)
    g = torch.ones(case.n)
    e.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g, g, clse, case.mask_diag,
               True, True, True, True, xmul, xlse, torch.ones_like(xlse))
    launches = {}
    for r in e._ext.traffic_end(token):
        launches[r["kernel"].split("<")[0]] = launches.get(r["kernel"].split("<")[0], 0) + 1
        if r["kernel"].startswith("fwd_kernel"):
            assert r["programs"] > 1, r  # one row block, several column splits
    assert launches.get("merge_rows_kernel") == 1 and launches.get("bwd_kernel") == 2, launches
