"""Worker of tests/test_distributed.py: one rank of a gloo group on localhost. Kept in its
own module so that torch.multiprocessing's spawn can import it."""
import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist


def problem(loss: str, counts, d: int, seed: int):
    """The global batch (fp64), identical on every rank and in the parent."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(counts)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    if loss == "supcon_loss":
        return {"features": r(n, 2, d), "labels": torch.randint(0, max(2, n // 3), (n,),
                                                                generator=gen)}
    if loss == "info_nce_bank":
        return {"query": r(n, d), "positive_key": r(n, d), "negative_keys": r(2 * n, d)}
    if loss == "multiple_negatives_ranking_loss":
        return {"a": r(n, d), "b": r(n, d), "c": r(n, d)}
    return {"a": r(n, d), "b": r(n, d)}


def call(ck, loss, tensors, scalars, backend, **dist_kw):
    """The loss on these tensors (the local slices, or the whole batch)."""
    if loss == "clip_loss":
        return ck.clip_loss(tensors["a"], tensors["b"], scalars[0], normalize=True,
                            backend=backend, **dist_kw)
    if loss == "siglip_loss":
        return ck.siglip_loss(tensors["a"], tensors["b"], scalars[0], scalars[1],
                              normalize=True, backend=backend, **dist_kw)
    if loss == "info_nce":
        return ck.info_nce(tensors["a"], tensors["b"], temperature=scalars[0], backend=backend,
                           **dist_kw)
    if loss == "info_nce_bank":
        return ck.info_nce(tensors["query"], tensors["positive_key"], tensors["negative_keys"],
                           temperature=scalars[0], backend=backend, **dist_kw)
    if loss == "nt_xent_loss":
        return ck.nt_xent_loss(tensors["a"], tensors["b"], temperature=scalars[0],
                               backend=backend, **dist_kw)
    if loss == "supcon_loss":
        return ck.supcon_loss(tensors["features"], tensors["labels"], temperature=scalars[0],
                              normalize=True, backend=backend, **dist_kw)
    if loss == "multiple_negatives_ranking_loss":
        return ck.multiple_negatives_ranking_loss(
            tensors["a"], tensors["b"], tensors["c"], scale=scalars[0], directions=MNRL_ALL,
            hardness_mode="all_negatives", hardness_strength=0.3, backend=backend, **dist_kw)
    if loss in ("clip_module", "siglip_module"):
        # open_clip's constructor arguments; one process gives the plain loss.
        world = dist.get_world_size() if dist_kw else 1
        rank = dist.get_rank() if dist_kw else 0
        if loss == "clip_module":
            mod = ck.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                              world_size=world, normalize=True, backend=backend)
            return mod(tensors["a"], tensors["b"], scalars[0])
        mod = ck.SigLipLoss(rank=rank, world_size=world, normalize=True, backend=backend)
        return mod(tensors["a"], tensors["b"], scalars[0], scalars[1])
    raise KeyError(loss)


MNRL_ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
SCALARS = {"multiple_negatives_ranking_loss": (6.0,), "clip_loss": (7.0,), "siglip_loss": (5.0, -3.0), "clip_module": (7.0,),
           "siglip_module": (5.0, -3.0), "info_nce": (0.3,),
           "info_nce_bank": (0.3,), "nt_xent_loss": (0.4,), "supcon_loss": (0.5,)}


def local_slices(tensors, counts, rank):
    start = sum(counts[:rank])
    out = {}
    for k, v in tensors.items():
        rows = v.shape[0]
        # The bank is split like the batch: twice the rows per rank.
        per = [c * rows // sum(counts) for c in counts]
        s = sum(per[:rank])
        out[k] = v[s:s + per[rank]]
    return out


def run(rank, world, init_file, out_dir, losses, counts, d, mode, backend, reduction):
    """Each loss of `losses` (one name or several, in one process group: starting the
    processes is most of a test's time) on this rank's slice; writes rank{rank}-{loss}.pt."""
    os.environ.setdefault("CONTRASTIVE_KERNELS_POISON", "1")

    def body(rank, world):
        import contrastive_kernels as ck
        for loss in ([losses] if isinstance(losses, str) else losses):
            _run_one(ck, rank, out_dir, loss, counts, d, mode, backend, reduction)
    _peer_rank(rank, world, init_file, out_dir, None, body)


def _run_one(ck, rank, out_dir, loss, counts, d, mode, backend, reduction):
    tensors = local_slices(problem(loss, counts, d, 0), counts, rank)
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v)
              for k, v in tensors.items()}
    scalars = [torch.tensor(s, dtype=torch.float64, requires_grad=True)
               for s in SCALARS[loss]]
    out = call(ck, loss, leaves, scalars, backend, group=dist.group.WORLD,
               dist_mode=mode, reduction=reduction) if reduction != "mean" else \
        call(ck, loss, leaves, scalars, backend, group=dist.group.WORLD, dist_mode=mode)
    result = {"loss": out.detach()}
    if reduction != "none":
        out.backward()
        result["grads"] = {k: v.grad for k, v in leaves.items() if v.is_floating_point()}
        result["scalar_grads"] = [s.grad for s in scalars]
    torch.save(result, os.path.join(out_dir, f"rank{rank}-{loss}.pt"))


def run_absent_peer(rank, world, init_file, out_dir):
    """Rank 1 joins the group but leaves before the loss; rank 0 must get a clear error."""
    import time
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=5))
        if rank != 0:
            return  # never calls the loss: its process exits
        import contrastive_kernels as ck
        x = torch.randn(4, 3)
        t0 = time.perf_counter()
        try:
            ck.clip_loss(x, x, 5.0, group=dist.group.WORLD)
            message = "no error"
        except Exception as exc:  # noqa: BLE001
            message = str(exc)
        with open(os.path.join(out_dir, "rank0.txt"), "w") as f:
            f.write(f"{time.perf_counter() - t0}\n{message}")
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())


def _peer_rank(rank, world, init_file, out_dir, name, body):
    """One rank of a gloo group running ``body(rank, world) -> results``, saved as
    rank{rank}-{name}.pt (unless name is None: the body saves its own); a failure is
    written to rank{rank}.err for the parent to report."""
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=60))
        torch.set_num_threads(1)
        results = body(rank, world)
        if name is not None:
            torch.save(results, os.path.join(out_dir, f"rank{rank}-{name}.pt"))
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # the parent reports it
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        sys.exit(1)


def run_st_gather(rank, world, init_file, out_dir, backend):
    """sentence-transformers' MultipleNegativesRankingLoss(gather_across_devices=True)
    and ours on this rank's slice (equal slices, as sentence-transformers requires): the
    per-rank loss and input gradients must agree; writes rank{rank}-st.pt."""
    def body(rank, world):
        from sentence_transformers.sentence_transformer import losses as st
        from contrastive_kernels.integrations import sentence_transformers as ours
        counts = (4,) * world
        tensors = local_slices(problem("multiple_negatives_ranking_loss", counts, 5, 1),
                               counts, rank)
        results = {}
        for name, cls in (("st", st.MultipleNegativesRankingLoss),
                          ("ours", ours.MultipleNegativesRankingLoss)):
            leaves = [tensors[k].clone().requires_grad_() for k in ("a", "b", "c")]
            kw = {"backend": backend} if name == "ours" else {}
            loss = cls(None, scale=6.0, gather_across_devices=True, directions=MNRL_ALL,
                       hardness_mode="in_batch_negatives", hardness_strength=0.3, **kw)
            out = loss.compute_loss_from_embeddings(leaves, None)
            out.backward()
            results[name] = {"loss": out.detach(), "grads": [x.grad for x in leaves]}
        return results
    _peer_rank(rank, world, init_file, out_dir, "st", body)


def run_lightly_gather(rank, world, init_file, out_dir, backend):
    """lightly's NTXentLoss and DCLWLoss with gather_distributed=True and ours on this
    rank's slice: writes rank{rank}-lightly.pt with both losses and input gradients."""
    def body(rank, world):
        from lightly import loss as theirs
        from contrastive_kernels.integrations import lightly as ours
        counts = (4,) * world
        tensors = local_slices(problem("nt_xent_loss", counts, 5, 2), counts, rank)
        results = {}
        for name in ("NTXentLoss", "DCLWLoss"):
            for side, module in (("theirs", theirs), ("ours", ours)):
                leaves = [tensors[k].clone().requires_grad_() for k in ("a", "b")]
                kw = {"backend": backend} if side == "ours" else {}
                out = getattr(module, name)(temperature=0.3, gather_distributed=True,
                                            **kw)(*leaves)
                out.backward()
                results[name, side] = {"loss": out.detach(), "grads": [x.grad for x in leaves]}
        return results
    _peer_rank(rank, world, init_file, out_dir, "lightly", body)
