"""GradCache against a plain chunked forward with the full graph: the same loss, the same
parameter (and loss-side scalar) gradients, the same random-state consumption and buffers,
with dropout and BatchNorm, one or several encoders, tensor or mapping inputs, autocast,
and DistributedDataParallel synchronizing once per step."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import contrastive_kernels as ck
from contrastive_kernels.testing import LargestTensor, relative_error

sys.path.insert(0, os.path.dirname(__file__))


class Tower(torch.nn.Module):
    """An MLP encoder with dropout and BatchNorm (random state and buffers both matter)."""

    def __init__(self, d_in=6, d_out=5, width=16, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.BatchNorm1d(width),
                                       torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(width, d_out))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x=None, *, input_ids=None, scale=None):
        if input_ids is not None:  # the mapping form: tokenizer-like keyword arguments
            x = input_ids.to(torch.float32) * scale
        return self.net(x)


def _clip_loss(logit_scale):
    return lambda a, b: ck.clip_loss(a, b, logit_scale.exp(), normalize=True, backend="cpu")


def _plain(encoders, loss_fn, inputs, chunk):
    """A plain chunked forward with the graph, then one backward."""
    embs = []
    for enc, x in zip(encoders, inputs):
        parts = [enc(**c) if isinstance(c, dict) else enc(c)
                 for c in ck.gradcache.split_input(x, chunk)]
        embs.append(torch.cat(parts))
    loss = loss_fn(*embs)
    loss.backward()
    return loss.detach()


def _state(modules, scale):
    grads = {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules)
             for n, p in m.named_parameters()}
    buffers = {f"{i}.{n}": b.clone() for i, m in enumerate(modules)
               for n, b in m.named_buffers()}
    return grads, buffers, scale.grad.clone(), torch.rand(3)


def _run(two_towers, mapping, chunk=5, n=12):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen)
    y = torch.randn(n, 6, generator=gen)
    if mapping:
        x = {"input_ids": torch.randint(0, 9, (n, 6), generator=gen), "scale": 0.3}
    results = []
    for cached in (True, False):
        towers = [Tower(seed=0), Tower(seed=1)] if two_towers else [Tower(seed=0)]
        for t in towers:
            t.train()
        scale = torch.tensor(2.0, requires_grad=True)
        encoders = towers if two_towers else towers * 2
        torch.manual_seed(7)
        if cached:
            gc = ck.GradCache(towers if two_towers else towers[0], _clip_loss(scale), chunk)
            loss = gc(x, y)
        else:
            loss = _plain(encoders, _clip_loss(scale), [x, y], chunk)
        results.append((loss, *_state(towers, scale)))
    return results


@pytest.mark.parametrize("two_towers", [False, True], ids=["one_encoder", "two_encoders"])
@pytest.mark.parametrize("mapping", [False, True], ids=["tensor", "mapping"])
def test_equals_the_full_graph_backward(two_towers, mapping):
    (loss_c, grads_c, bufs_c, sg_c, rng_c), (loss_p, grads_p, bufs_p, sg_p, rng_p) = \
        _run(two_towers, mapping)
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-6, atol=1e-7)
    assert grads_c.keys() == grads_p.keys()
    for k in grads_c:
        torch.testing.assert_close(grads_c[k], grads_p[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(sg_c, sg_p, rtol=1e-5, atol=1e-6)
    for k in bufs_c:  # BatchNorm statistics as after one chunked pass, not two
        torch.testing.assert_close(bufs_c[k], bufs_p[k], msg=k)
    assert torch.equal(rng_c, rng_p), "the random state after the step differs"


def test_dropout_masks_are_replayed():
    """Planted bug: without the replay the second forward draws new dropout masks and the
    gradients differ from the full-graph backward (the check above can fail)."""
    original = ck.gradcache._RandomState.replay
    ck.gradcache._RandomState.replay = lambda self: __import__("contextlib").nullcontext()
    try:
        (_, grads_c, *_), (_, grads_p, *_) = _run(False, False)
    finally:
        ck.gradcache._RandomState.replay = original
    assert any(not torch.allclose(grads_c[k], grads_p[k], rtol=1e-5, atol=1e-6)
               for k in grads_c)


def test_under_autocast():
    """bf16 autocast on the CPU: both passes run under the caller's autocast, and the
    cached step's gradients are the fp32 step's to bf16 accuracy, as the plain autocast
    step's are. (Not bitwise equal to the plain step: there autocast's cached bf16 weight
    copy is shared by every chunk, so the chunks' weight gradients are summed in bf16
    before the cast back to fp32; GradCache sums them in fp32, per chunk.)"""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(12, 6, generator=gen), torch.randn(12, 6, generator=gen)
    out = {}
    for name in ("cached", "plain", "fp32"):
        tower = Tower(seed=4).eval()  # dropout off: rounding only
        scale = torch.tensor(1.5, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
            loss = (ck.GradCache(tower, _clip_loss(scale), 5)(x, y) if name == "cached"
                    else _plain([tower, tower], _clip_loss(scale), [x, y], 5))
        out[name] = (loss, [p.grad.clone() for p in tower.parameters()], scale.grad.clone())
    # Against fp32, the cached step is within bf16 rounding of the network (a few bf16
    # roundings per path) and no worse than the plain autocast step.
    ref_loss, ref_grads, ref_scale = out["fp32"]
    (loss_c, grads_c, scale_c), (loss_p, grads_p, scale_p) = out["cached"], out["plain"]
    pairs = [(loss_c, loss_p, ref_loss)] + list(zip(grads_c, grads_p, ref_grads)) + \
        [(scale_c, scale_p, ref_scale)]
    for i, (cached, plain, ref) in enumerate(pairs):
        err_cached, err_plain = relative_error(cached, ref), relative_error(plain, ref)
        assert err_cached <= max(2 * err_plain, 2e-2), (i, err_cached, err_plain)
    torch.testing.assert_close(out["cached"][0], out["plain"][0], rtol=1e-6, atol=1e-6)


def test_memory_is_one_chunk_of_activations():
    """An encoder with a (rows × 4096) intermediate: with chunks of 8 of 64 rows the
    largest tensor of the step is one chunk's, never the batch's."""
    wide = torch.nn.Sequential(torch.nn.Linear(6, 4096), torch.nn.ReLU(),
                               torch.nn.Linear(4096, 5))
    x, y = torch.randn(64, 6), torch.randn(64, 6)
    mode = LargestTensor(floating_only=True)
    with mode:
        ck.GradCache(wide, lambda a, b: ck.info_nce(a, b, backend="cpu"), 8)(x, y)
    assert mode.largest <= 8 * 4096 and mode.largest < 64 * 4096 // 4, mode.op


def test_no_grad_returns_the_loss_without_backward():
    tower = Tower()
    with torch.no_grad():
        loss = ck.GradCache(tower, lambda a, b: ck.info_nce(a, b), 4)(torch.randn(8, 6),
                                                                     torch.randn(8, 6))
    assert loss.dim() == 0 and all(p.grad is None for p in tower.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        ck.GradCache(Tower(), lambda a: a.sum(), 0)
    with pytest.raises(ValueError, match="encoders"):
        ck.GradCache([Tower()], lambda a, b: a.sum(), 2)(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match="0-dim"):
        ck.GradCache(Tower(), lambda a: a, 2)(torch.randn(4, 6))
    with pytest.raises(TypeError, match="mappings"):
        ck.GradCache(Tower(), lambda a: a.sum(), 2)([torch.randn(4, 6)])


# --------------------------------------------------------------------------------------
# DistributedDataParallel: gloo, 2 ranks.
# --------------------------------------------------------------------------------------
def _ddp_worker(rank, world, init_file, out_dir):
    import traceback
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
        torch.set_num_threads(1)
        tower = Tower(seed=0).eval()
        ddp = torch.nn.parallel.DistributedDataParallel(tower)
        syncs = []

        def counting_hook(state, bucket):
            syncs.append(1)
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            return default_hooks.allreduce_hook(None, bucket)
        ddp.register_comm_hook(None, counting_hook)
        gen = torch.Generator().manual_seed(10 + rank)
        x, y = torch.randn(12, 6, generator=gen), torch.randn(12, 6, generator=gen)
        loss = ck.GradCache(ddp, lambda a, b: ck.info_nce(a, b, backend="cpu"), 4)(x, y)
        torch.save({"loss": loss, "grads": [p.grad for p in tower.parameters()],
                    "syncs": len(syncs)}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        sys.exit(1)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_distributed_data_parallel_syncs_once(tmp_path):
    """Each rank's cached step under DDP: the gradients are the mean over ranks of each
    rank's full-graph gradients, reduced in one synchronization (the last chunk's), not
    one per chunk (6 chunk backwards per step here)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"),
                                                   str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    errors = [f.read_text() for f in tmp_path.glob("rank*.err")]
    assert not errors, "\n".join(errors)
    want = []
    for rank in range(2):
        tower = Tower(seed=0).eval()
        gen = torch.Generator().manual_seed(10 + rank)
        x, y = torch.randn(12, 6, generator=gen), torch.randn(12, 6, generator=gen)
        _plain([tower, tower], lambda a, b: ck.info_nce(a, b, backend="cpu"), [x, y], 4)
        want.append([p.grad for p in tower.parameters()])
    mean = [(a + b) / 2 for a, b in zip(*want)]
    buckets = None
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        for a, b in zip(res["grads"], mean):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        buckets = res["syncs"] if buckets is None else buckets
        assert res["syncs"] == buckets and 1 <= buckets <= 2, res["syncs"]
