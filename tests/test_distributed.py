"""SPEC §3 with real processes: gloo groups of W = 2 and 3 on localhost, each rank passing
its (uneven) slice; the mean of the per-rank losses must equal the single-process loss on
the concatenated batch, and each rank's input gradient / W its slice of the single-process
gradient (scalar parameters: the mean of the per-rank gradients)."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS

sys.path.insert(0, os.path.dirname(__file__))
import dist_worker as W  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
BACKENDS = [b for b in KERNEL_BACKENDS if b in ("cpu", "triton")]
LOSSES = ["clip_loss", "siglip_loss", "info_nce", "info_nce_bank", "nt_xent_loss",
          "supcon_loss"]


def _spawn(fn, world, args, tmp_path):
    init = tmp_path / "init"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(r, world, str(init), str(tmp_path), *args))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    errors = [f.read_text() for f in tmp_path.glob("rank*.err")]
    assert not errors, "\n".join(errors)


def _single_process(loss, counts, d):
    tensors = W.problem(loss, counts, d, 0)
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v)
              for k, v in tensors.items()}
    scalars = [torch.tensor(s, dtype=torch.float64, requires_grad=True)
               for s in W.SCALARS[loss]]
    out = W.call(ck, loss, leaves, scalars, "torch")
    out.backward()
    return out, {k: v.grad for k, v in leaves.items() if v.is_floating_point()}, \
        [s.grad for s in scalars]


def _check(losses, counts, d, mode, backend, tmp_path):
    """Every loss of `losses` in one process group of len(counts) ranks, each checked
    against the single-process reference on the concatenated batch."""
    world = len(counts)
    _spawn(W.run, world, (losses, counts, d, mode, backend, "mean"), tmp_path)
    for loss in losses:
        results = [torch.load(tmp_path / f"rank{r}-{loss}.pt") for r in range(world)]
        ref, ref_grads, ref_scalars = _single_process(loss, counts, d)
        mean_loss = torch.stack([r["loss"] for r in results]).mean()
        torch.testing.assert_close(mean_loss, ref, rtol=1e-9, atol=1e-12, msg=f"{loss}: loss")
        for name, g in ref_grads.items():
            got = torch.cat([r["grads"][name] for r in results]) / world
            torch.testing.assert_close(got, g, rtol=1e-8, atol=1e-12,
                                       msg=f"{loss}: grad of {name}")
        for i, g in enumerate(ref_scalars):
            got = torch.stack([r["scalar_grads"][i] for r in results]).mean()
            torch.testing.assert_close(got, g, rtol=1e-8, atol=1e-12,
                                       msg=f"{loss}: scalar grad {i}")


# Uneven slices, and a group of one; the Triton interpreter is slow, so it runs W = 2 only.
GROUPS = [(b, c) for b in BACKENDS for c in ((5, 3), (4, 2, 3), (6,))
          if b == "cpu" or len(c) == 2]


@pytest.mark.parametrize("mode", ["gather", "ring"])
@pytest.mark.parametrize("backend,counts", GROUPS, ids=[f"{b}-W{len(c)}" for b, c in GROUPS])
def test_matches_single_process(mode, backend, counts, tmp_path):
    """Every loss of LOSSES, in one process group per (backend, group, mode): starting the
    ranks costs more than the losses."""
    _check(LOSSES, counts, 6, mode, backend, tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multiple_negatives_ranking_gathered(backend, tmp_path):
    """Every candidate set, a hard-negative column and a hardness offset, gathered over
    uneven slices (the learnable scale's gradient too)."""
    _check(["multiple_negatives_ranking_loss"], (5, 3), 6, "gather", backend, tmp_path)


def test_sentence_transformers_gather_across_devices(tmp_path):
    """Our sentence-transformers drop-in with gather_across_devices=True equals
    sentence-transformers' own on each rank: loss and input gradients."""
    pytest.importorskip("sentence_transformers")
    _spawn(W.run_st_gather, 2, (BACKENDS[0],), tmp_path)
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}-st.pt")
        torch.testing.assert_close(res["ours"]["loss"], res["st"]["loss"], rtol=1e-10,
                                   atol=1e-12)
        for a, b in zip(res["ours"]["grads"], res["st"]["grads"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_lightly_gather_distributed(tmp_path):
    """Our lightly NTXentLoss and DCLWLoss with gather_distributed=True equal lightly's
    on each rank: loss and input gradients."""
    pytest.importorskip("lightly")
    _spawn(W.run_lightly_gather, 2, (BACKENDS[0],), tmp_path)
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}-lightly.pt")
        for name in ("NTXentLoss", "DCLWLoss"):
            mine, theirs = res[name, "ours"], res[name, "theirs"]
            torch.testing.assert_close(mine["loss"], theirs["loss"], rtol=1e-10, atol=1e-12)
            for a, b in zip(mine["grads"], theirs["grads"]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["clip_module", "siglip_module"])
def test_open_clip_constructor_arguments(loss, tmp_path):
    """ClipLoss(local_loss=True, gather_with_grad=True, rank, world_size) and
    SigLipLoss(rank, world_size) on the default group."""
    _check([loss], (3, 4), 5, "gather", BACKENDS[0], tmp_path)


def test_open_clip_unsupported_combinations_are_refused():
    with pytest.raises(ValueError, match="local_loss"):
        ck.ClipLoss(world_size=2, rank=0)
    with pytest.raises(ValueError, match="horovod"):
        ck.ClipLoss(use_horovod=True)


def test_absent_peer_gives_a_clear_error_not_a_hang(tmp_path):
    _spawn(W.run_absent_peer, 2, (), tmp_path)
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert float(seconds) < 60, f"took {seconds} s"
    assert "rank" in message and "contrastive_kernels" in message, message


def test_bad_dist_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="dist_mode"):
        ck.clip_loss(x, x, 1.0, group=object(), dist_mode="tree")
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="init_process_group"):
            ck.clip_loss(x, x, 1.0, group=object())
