"""The batch-wide losses across processes (SPEC §3) on the tiled engines.

Each rank's anchor rows meet the global candidates either gathered (``"gather"``: keys
all-gathered with a gradient all-reduce, then one engine call) or ring-passed (``"ring"``:
``distributed.RingSoftmax`` / ``RingPairwise``). Keys that mark positives are global
indices (or labels), so a positive is found wherever its block is. The returned value is
W·(sum over local anchors)/(global anchor count) for "mean" and W·(local sum) for "sum", so
that the mean over ranks equals the single-process loss and each rank's input gradient is
W times its slice of the single-process gradient; "none" returns the local anchors' values.
"""
from __future__ import annotations

import torch

from . import collectives as D
from ..losses._common import acc_dtype, as_tensor, inverse_temperature, row_dot
from ..engines.pairwise import SIGLIP, pair_params, pairwise_engine
from ..engines.softmax import EngineOptions, softmax_engine
from ..losses.supcon import flatten_views
from ..losses import multiple_negatives_ranking as mnrl
from ..losses import nt_xent as nt_xent_ops


class Context:
    """The group, the mode, and this rank's place in the global batch."""

    def __init__(self, group, mode: str, n_local: int, device):
        self.group, self.mode = group, mode
        self.rank, self.size = D.rank_and_size(group)
        self.counts = D.row_counts(n_local, device, group)
        self.start = sum(self.counts[: self.rank])
        self.total = sum(self.counts)
        self.device = device

    def ids(self) -> torch.Tensor:
        """Global indices of the local rows."""
        return torch.arange(self.start, self.start + self.counts[self.rank],
                            device=self.device)

    def others(self, full: torch.Tensor) -> torch.Tensor:
        """Rows of a gathered tensor that belong to the other ranks (rank order)."""
        end = self.start + self.counts[self.rank]
        return torch.cat([full[: self.start], full[end:]])

    def finish(self, rows: torch.Tensor, reduction: str, count=None) -> torch.Tensor:
        """Local anchor values -> this rank's share (see the module docstring)."""
        if reduction == "none":
            return rows
        total = rows.sum() * self.size
        if reduction == "sum":
            return total
        count = self.total if count is None else count
        return total / max(int(count), 1)


def _softmax(ctx: Context, q, k_local, k_keys, scale, impl, *, row_key, extra=None,
             mask_home=False, normalize=True, k_counts=None):
    """(lse, pos) of the local rows q against every rank's k rows. ``k_keys`` are the
    local block's keys; with mask_home, k_local starts with q's own rows."""
    counts = k_counts if k_counts is not None else ctx.counts
    if ctx.mode == "gather":
        full, _ = D.all_gather_rows(k_local, ctx.group, counts)
        keys = D.all_gather_labels(k_keys, ctx.group, counts)
        start = sum(counts[: ctx.rank])
        end = start + counts[ctx.rank]
        # The own block first, so that mask_diag (j == i) finds each row's own column.
        k_all = torch.cat([full[start:end], full[:start], full[end:]])
        keys = torch.cat([keys[start:end], keys[:start], keys[end:]])
        lse, pos, _ = softmax_engine(q, k_all, scale, impl=impl, row_key=row_key,
                                     col_key=keys, extra=extra,
                                     opts=EngineOptions(mask_diag=mask_home,
                                                        normalize=normalize))
        return lse, pos
    q = q.contiguous()
    scale = scale.to(acc_dtype(q))
    if extra is not None:
        extra = extra.to(acc_dtype(q)).contiguous()
    return D.RingSoftmax.apply(q, k_local.contiguous(), scale, extra, row_key.contiguous(),
                               k_keys.contiguous(), mask_home, normalize, impl, ctx.group,
                               counts)


def clip_loss(image_features, text_features, logit_scale, reduction, normalize, impl, group,
              mode):
    """open_clip ClipLoss(local_loss=True, gather_with_grad=True): local images against all
    texts and local texts against all images, targets the global indices."""
    ctx = Context(group, mode, image_features.shape[0], image_features.device)
    ids = ctx.ids()
    scale = as_tensor(logit_scale, image_features)
    lse_i, pos_i = _softmax(ctx, image_features, text_features, ids, scale, impl,
                            row_key=ids, normalize=normalize)
    lse_t, pos_t = _softmax(ctx, text_features, image_features, ids, scale, impl,
                            row_key=ids, normalize=normalize)
    return ctx.finish(0.5 * ((lse_i - pos_i) + (lse_t - pos_t)), reduction)


def info_nce(query, positive_key, negative_keys, temperature, reduction, normalize, impl,
             group, mode):
    """In-batch: local queries against every rank's positive keys. With a bank: the own
    positive plus every rank's negatives (the global bank is the ranks' banks in order)."""
    ctx = Context(group, mode, query.shape[0], query.device)
    ids = ctx.ids()
    scale = inverse_temperature(temperature, query)
    if negative_keys is None:
        lse, pos = _softmax(ctx, query, positive_key, ids, scale, impl, row_key=ids,
                            normalize=normalize)
        return ctx.finish(lse - pos, reduction)
    bank_counts = D.row_counts(negative_keys.shape[0], query.device, group)
    positive = scale * row_dot(query, positive_key, normalize)
    no_target = torch.full_like(ids, -1)
    bank_ids = torch.arange(negative_keys.shape[0], device=query.device)
    lse, _ = _softmax(ctx, query, negative_keys, bank_ids, scale, impl, row_key=no_target,
                      extra=positive, normalize=normalize, k_counts=bank_counts)
    return ctx.finish(lse - positive, reduction)


def nt_xent_loss(z1, z2, temperature, reduction, normalize, impl, group, mode,
                 decoupled=False, positive_weight=None):
    """Local rows of z1 and z2 against all 2N rows of the global cat(Z1, Z2) but their
    own; positions (global row numbers) are the keys, the partner's position the target.
    Decoupled or weighted (gather only): the two views' gathered rows, each beginning
    with the local ones, as separate candidate sets (losses/nt_xent.two_view_rows)."""
    ctx = Context(group, mode, z1.shape[0], z1.device)
    if decoupled or positive_weight is not None:
        if mode != "gather":
            raise ValueError("nt_xent_loss: decoupled / positive_weight need "
                             f"dist_mode='gather', got {mode!r}")
        keys1, keys2 = (torch.cat([z, ctx.others(D.all_gather_rows(z, group, ctx.counts)[0])])
                        for z in (z1, z2))
        rows = nt_xent_ops.two_view_rows(z1, z2, keys1, keys2,
                                         inverse_temperature(temperature, z1), impl,
                                         normalize, decoupled, positive_weight)
        return ctx.finish(rows, reduction, 2 * ctx.total)
    ids = ctx.ids()
    q = torch.cat([z1, z2])
    positions = torch.cat([ids, ctx.total + ids])
    targets = torch.cat([ctx.total + ids, ids])
    scale = inverse_temperature(temperature, z1)
    if mode == "gather":
        g1, _ = D.all_gather_rows(z1, group, ctx.counts)
        g2, _ = D.all_gather_rows(z2, group, ctx.counts)
        every = torch.arange(ctx.total, device=z1.device)
        # The own rows first (as q orders them), so mask_diag finds each row's own column.
        k_all = torch.cat([ctx_own_rows(g1, g2, ctx), ctx.others(g1), ctx.others(g2)])
        keys = torch.cat([positions, ctx.others(every), ctx.total + ctx.others(every)])
        lse, pos, _ = softmax_engine(q, k_all, scale, impl=impl, row_key=targets,
                                     col_key=keys,
                                     opts=EngineOptions(mask_diag=True, normalize=normalize))
    else:
        counts2 = [2 * c for c in ctx.counts]
        lse, pos = D.RingSoftmax.apply(q.contiguous(), q.contiguous(), scale, None, targets,
                                       positions, True, normalize, impl, group, counts2)
    return ctx.finish(lse - pos, reduction, 2 * ctx.total)


def ctx_own_rows(g1, g2, ctx: Context) -> torch.Tensor:
    """This rank's rows of the gathered Z1 and Z2, in q's order (z1 rows, then z2 rows)."""
    end = ctx.start + ctx.counts[ctx.rank]
    return torch.cat([g1[ctx.start:end], g2[ctx.start:end]])


def supcon_loss(features, labels, temperature, base_temperature, reduction, normalize, impl,
                group, mode):
    """Local anchors (views flattened view-major) against every rank's rows but their own;
    positives by label. Without labels, each sample's global index is its class."""
    b = features.shape[0]
    ctx = Context(group, mode, b, features.device)
    if labels is None:
        labels = ctx.ids()
    flat, flat_labels = flatten_views(features, labels)
    flat_labels = flat_labels.to(torch.int64)
    views = flat.shape[0] // max(b, 1)
    flat_counts = [c * views for c in ctx.counts]
    tau = as_tensor(temperature, flat)
    lse, pos = _softmax(ctx, flat, flat, flat_labels, 1.0 / tau, impl, row_key=flat_labels,
                        mask_home=True, normalize=normalize, k_counts=flat_counts)
    all_labels = D.all_gather_labels(flat_labels, group, flat_counts)
    uniq, counts = torch.unique(all_labels, return_counts=True)
    n_pos = (counts[torch.searchsorted(uniq, flat_labels)] - 1).to(lse.dtype)
    valid = n_pos > 0
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    rows = -(tau / as_tensor(base_temperature, flat)) * (pos / n_pos.clamp_min(1) - lse)
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    valid_total = int(counts[counts > 1].sum())
    return ctx.finish(rows, reduction, valid_total)


def siglip_loss(image_features, text_features, logit_scale, logit_bias, reduction, normalize,
                impl, group, mode):
    """Local images against every rank's texts; z = +1 only for the same global index, so
    the other ranks' blocks are negatives only."""
    ctx = Context(group, mode, image_features.shape[0], image_features.device)
    ids = ctx.ids()
    params = pair_params(image_features, scale=logit_scale, bias=logit_bias)
    if mode == "gather":
        texts, _ = D.all_gather_rows(text_features, group, ctx.counts)
        every = torch.arange(ctx.total, device=ids.device)
        if reduction == "none":
            return pairwise_engine(image_features, texts, params, impl=impl, kind=SIGLIP,
                                   row_key=ids, col_key=every, normalize=normalize,
                                   reduced=False)
        weight = ctx.size / (ctx.total if reduction == "mean" else 1)
        return pairwise_engine(image_features, texts, params, impl=impl, kind=SIGLIP,
                               row_key=ids, col_key=every, normalize=normalize, weight=weight)
    rows = D.RingPairwise.apply(image_features.contiguous(), text_features.contiguous(),
                                params, ids, ids, SIGLIP, False, normalize, impl, group,
                                ctx.counts)
    return ctx.finish(rows, reduction)


def multiple_negatives_ranking_loss(queries, docs, *, scale, directions, partition_mode,
                                    hardness_mode, hardness_strength, reduction, normalize,
                                    impl, group):
    """sentence-transformers' gather_across_devices: local queries (and their documents)
    against every rank's queries and document columns, all gathered with their gradient;
    each gathered block starts with this rank's rows so that the engine's own-column
    exclusion finds them."""
    ctx = Context(group, "gather", queries.shape[0], queries.device)

    def gathered(x):
        full, _ = D.all_gather_rows(x, group, ctx.counts)
        return torch.cat([x, ctx.others(full)])

    cands = mnrl.Candidates(gathered(queries), docs, [gathered(d) for d in docs])
    rows = mnrl.loss_rows(queries, docs, cands, scale, directions, partition_mode,
                          hardness_mode, hardness_strength, normalize, impl)
    return ctx.finish(rows, reduction)
