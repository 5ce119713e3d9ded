"""Bad input raises ValueError/TypeError naming the argument, on every backend."""
import pytest
import torch

import contrastive_kernels as ck
from harness import DEVICE, KERNEL_BACKENDS, generator, randn

BACKENDS = ["torch"] + KERNEL_BACKENDS


def _x(n=4, d=3, dtype=torch.float32):
    return randn((n, d), generator("validation", n, d), dtype)


BAD_CALLS = [
    # (description, callable, exception type, text the message must contain)
    ("query rank", lambda b: ck.info_nce(_x()[0], _x(), backend=b), ValueError, "query"),
    ("positive_key rows", lambda b: ck.info_nce(_x(4), _x(5), backend=b), ValueError,
     "positive_key"),
    ("negative_keys D", lambda b: ck.info_nce(_x(), _x(), _x(6, 2), backend=b), ValueError,
     "negative_keys"),
    ("dtype mismatch", lambda b: ck.info_nce(_x(), _x().double(), backend=b), TypeError,
     "positive_key"),
    ("int features", lambda b: ck.clip_loss(_x().long(), _x(), 1.0, backend=b), TypeError,
     "image_features"),
    ("not a tensor", lambda b: ck.nt_xent_loss([[1.0]], _x(), backend=b), TypeError, "z1"),
    ("empty batch", lambda b: ck.nt_xent_loss(_x(0), _x(0), backend=b), ValueError, "z1"),
    ("zero D", lambda b: ck.clip_loss(_x(4, 0), _x(4, 0), 1.0, backend=b), ValueError,
     "image_features"),
    ("temperature 0", lambda b: ck.nt_xent_loss(_x(), _x(), 0.0, backend=b), ValueError,
     "temperature"),
    ("temperature < 0 tensor", lambda b: ck.info_nce(_x(), _x(), temperature=torch.tensor(-1.0),
                                                    backend=b), ValueError, "temperature"),
    ("temperature shape", lambda b: ck.info_nce(_x(), _x(), temperature=torch.ones(2),
                                                backend=b), ValueError, "temperature"),
    ("logit_scale type", lambda b: ck.clip_loss(_x(), _x(), "10", backend=b), TypeError,
     "logit_scale"),
    ("lamda 0", lambda b: ck.simcse_unsup_loss(_x(4), 0.0, backend=b), ValueError, "lamda"),
    ("odd simcse rows", lambda b: ck.simcse_unsup_loss(_x(5), backend=b), ValueError, "y_pred"),
    ("simcse sup rows", lambda b: ck.simcse_sup_loss(_x(5), backend=b), ValueError, "y_pred"),
    ("labels length", lambda b: ck.supcon_loss(_x(4), torch.arange(3).to(DEVICE), backend=b),
     ValueError, "labels"),
    ("labels dtype", lambda b: ck.supcon_loss(_x(4), torch.zeros(4).to(DEVICE), backend=b),
     TypeError, "labels"),
    ("features rank", lambda b: ck.supcon_loss(_x(4)[0], backend=b), ValueError, "features"),
    ("base_temperature", lambda b: ck.supcon_loss(_x(4), base_temperature=-1.0, backend=b),
     ValueError, "base_temperature"),
    ("n_pair rows", lambda b: ck.n_pair_loss(_x(4), _x(3), backend=b), ValueError, "positives"),
    ("reduction", lambda b: ck.info_nce(_x(), _x(), reduction="avg", backend=b), ValueError,
     "reduction"),
    ("mining", lambda b: ck.triplet_margin_loss(_x(4), torch.arange(4).to(DEVICE),
                                                mining="semi", backend=b), ValueError,
     "mining"),
    ("negative margin", lambda b: ck.contrastive_loss(_x(4), torch.arange(4).to(DEVICE),
                                                      margin=-1.0, backend=b), ValueError,
     "margin"),
    ("single row pairwise", lambda b: ck.contrastive_loss(_x(1), torch.arange(1).to(DEVICE),
                                                          backend=b), ValueError,
     "embeddings"),
    ("triplet negative margin", lambda b: ck.triplet_margin_loss(
        _x(4), torch.arange(4).to(DEVICE), margin=torch.tensor(-0.5), backend=b), ValueError,
     "margin"),
    ("triplet labels length", lambda b: ck.triplet_margin_loss(_x(4), torch.arange(5).to(DEVICE),
                                                               backend=b), ValueError, "labels"),
    ("triplet labels dtype", lambda b: ck.triplet_margin_loss(_x(4), torch.zeros(4).to(DEVICE),
                                                              backend=b), TypeError, "labels"),
    ("contrastive labels length", lambda b: ck.contrastive_loss(
        _x(4), torch.arange(3).to(DEVICE), backend=b), ValueError, "labels"),
    ("contrastive labels rank", lambda b: ck.contrastive_loss(
        _x(4), torch.zeros(4, 1, dtype=torch.long).to(DEVICE), backend=b), ValueError, "labels"),
    ("contrastive labels dtype", lambda b: ck.contrastive_loss(
        _x(4), torch.zeros(4, dtype=torch.bool).to(DEVICE), backend=b), TypeError, "labels"),
    ("contrastive margin type", lambda b: ck.contrastive_loss(
        _x(4), torch.arange(4).to(DEVICE), margin="1", backend=b), TypeError, "margin"),
    ("siglip rows", lambda b: ck.siglip_loss(_x(4), _x(3), 10.0, -10.0, backend=b), ValueError,
     "text_features"),
    ("siglip width", lambda b: ck.siglip_loss(_x(4), _x(4, 5), 10.0, -10.0, backend=b),
     ValueError, "text_features"),
    ("siglip dtype", lambda b: ck.siglip_loss(_x(4), _x(4).double(), 10.0, -10.0, backend=b),
     TypeError, "text_features"),
    ("siglip bias shape", lambda b: ck.siglip_loss(_x(4), _x(4), 10.0, torch.zeros(2), backend=b),
     ValueError, "logit_bias"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("what,call,exc,text", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_naming_the_argument(backend, what, call, exc, text):
    with pytest.raises(exc, match=text):
        call(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ck.info_nce(_x(), _x(), backend="tpu")


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("CONTRASTIVE_KERNELS_BACKEND", "torch")
    from contrastive_kernels import dispatch
    assert dispatch.resolve("auto", DEVICE, "info_nce") == "torch"
    monkeypatch.setenv("CONTRASTIVE_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="CONTRASTIVE_KERNELS_BACKEND"):
        ck.info_nce(_x(), _x())


def test_unbuilt_extension_backends_fail_clearly():
    for name in ("cuda", "cpu"):
        if ck.backend_info()[name]["available"]:
            continue
        with pytest.raises(ck.BackendUnavailableError, match=name):
            ck.info_nce(_x(), _x(), backend=name)


def test_every_loss_runs_on_every_kernel_backend():
    """SPEC §2: all ten losses have kernels; no backend falls back to the reference."""
    from contrastive_kernels import dispatch
    from contrastive_kernels.reference import REFERENCE_LOSSES
    assert set(REFERENCE_LOSSES) == set(dispatch.ENGINE_LOSSES)
    for name in KERNEL_BACKENDS:
        for loss in REFERENCE_LOSSES:
            assert dispatch.resolve(name, DEVICE, loss) == name
            assert dispatch.select(name, DEVICE, loss) is not None


def test_backend_info_shape():
    from contrastive_kernels import dispatch
    info = ck.backend_info()
    assert set(info) == {"auto", "torch", "triton", "cuda", "cpu"}
    for name, entry in info.items():
        extra = {"archs", "emulated"} if name == "cuda" else set()
        assert set(entry) == {"built", "available", "reason"} | extra
        assert entry["available"] or entry["reason"]
    assert info["cuda"]["emulated"] == dispatch.cuda_emulated()
    if not info["cuda"]["emulated"]:
        assert bool(info["cuda"]["archs"]) == info["cuda"]["built"]


def test_tensors_on_different_devices():
    other = torch.empty((4, 3), device="meta")
    with pytest.raises(ValueError, match="positive_key is on meta"):
        ck.info_nce(_x(), other)
