"""Multiple-negatives ranking (sentence-transformers' MNRL) on the softmax engine.

A query row's partition function is a joint softmax over several candidate sets (query →
every document column, query → other queries, its document → every query, its document →
other documents). Each set is one or more engine calls whose (N,) log-sum-exps are merged
here (an O(N) log-sum-exp of log-sum-exps), so no N×M tensor exists. Two engine
capabilities make every configuration expressible:

- a candidate set that leaves each row's own column out (``mask_diag`` with the row's own
  key block first), its own column re-entered, when it needs a different logit, as an
  O(N·D) row logit;
- a logit offset without gradient, ``α·stop_grad(cos)`` on some negatives (the hardness
  weighting of Lan et al. 2025): such a set runs at scale ``s + α`` while its features'
  gradients are scaled by ``s / (s + α)`` (``boost_features``), which is exactly the
  gradient of ``s·cos + α·stop_grad(cos)``; a learnable scale still gets ``Σ p·cos``.
"""
from __future__ import annotations

import torch

from ._common import as_tensor, reduce_rows, row_dot
from ..engines.softmax import candidate_lse, merge_lse, widen_half

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


class Candidates:
    """The candidate key blocks of a batch as every rank sees them: ``queries`` and
    ``docs[b]`` hold the global rows (this rank's own rows first, so that an engine call
    with ``mask_diag`` finds each local row's own column); ``local_docs[b]`` the local rows.
    A single process is the case where global and local coincide."""

    def __init__(self, queries, local_docs, docs):
        self.queries, self.local_docs, self.docs = queries, local_docs, docs


def _set_lse(rows, keys, scale, boost, impl, normalize, exclude_own):
    return candidate_lse(rows, keys, scale, impl=impl, normalize=normalize,
                         exclude_own=exclude_own, boost=boost)


def _own_logit(rows, own_keys, scale, boost, normalize):
    """(N,) logit of row i against its own key i: scale·cos + boost·stop_grad(cos)."""
    cos = row_dot(rows, own_keys, normalize)
    return scale * cos + boost * cos.detach() if boost else scale * cos


def _doc_boosts(mode, alpha, blocks):
    """Per document block b: (boost of the other rows' columns, boost of the own column).
    Block 0 holds the positives, blocks 1.. the hard-negative columns."""
    others_boosted = mode in ("in_batch_negatives", "all_negatives")
    own_boosted = mode in ("hard_negatives", "all_negatives")
    return [(alpha if others_boosted else 0.0,
             alpha if (own_boosted and b > 0) else 0.0) for b in range(blocks)]


def _query_to_doc(q, cands, scale, alpha, mode, impl, normalize):
    """Log-sum-exp parts of query → every document column. Blocks whose own column has
    the same boost as the rest are fused into one call per boost; the others leave the
    own column out and add it back as a row logit."""
    boosts = _doc_boosts(mode, alpha, len(cands.docs))
    parts = []
    fused = {}
    for b, (others, own) in enumerate(boosts):
        if others == own:
            fused.setdefault(others, []).append(cands.docs[b])
    for boost, blocks in fused.items():
        keys = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        parts.append(_set_lse(q, keys, scale, boost, impl, normalize, False))
    for b, (others, own) in enumerate(boosts):
        if others != own:
            parts.append(_set_lse(q, cands.docs[b], scale, others, impl, normalize, True))
            parts.append(_own_logit(q, cands.local_docs[b], scale, own, normalize))
    return parts


def _direction_parts(direction, q, cands, scale, alpha, mode, impl, normalize):
    d0 = cands.local_docs[0]
    if direction == "query_to_doc":
        return _query_to_doc(q, cands, scale, alpha, mode, impl, normalize)
    if direction == "query_to_query":
        keys = q if cands.queries is None else cands.queries
        return [_set_lse(q, keys, scale, 0.0, impl, normalize, True)]
    if direction == "doc_to_query":
        keys = q if cands.queries is None else cands.queries
        return [_set_lse(d0, keys, scale, 0.0, impl, normalize, False)]
    # Each block leaves out the row's own document and the own hard negatives.
    return [_set_lse(d0, block, scale, 0.0, impl, normalize, True) for block in cands.docs]


def loss_rows(queries, docs, cands: Candidates, scale, directions, partition_mode,
              hardness_mode, hardness_strength, normalize, impl):
    """(N,) per-query losses log Z_i − s·cos(q_i, d_i) of the local queries (N, D) and
    their positive documents docs[0] (N, D), hard-negative columns docs[1:] (N, D) each."""
    scale = as_tensor(scale, queries)
    alpha = float(hardness_strength) if hardness_mode is not None else 0.0
    if tuple(directions) != ("query_to_doc",) or alpha:
        # Several engine calls share these tensors: sum their gradients in fp32.
        queries, *docs = widen_half(queries, *docs)
        cands = Candidates(None, docs, docs) if cands.queries is None else Candidates(
            widen_half(cands.queries)[0], docs, list(widen_half(*cands.docs)))
    per_direction = [merge_lse(_direction_parts(d, queries, cands, scale, alpha, hardness_mode,
                                             impl, normalize)) for d in directions]
    if partition_mode == "joint":
        log_z = merge_lse(per_direction)
    else:
        log_z = torch.stack(per_direction).mean(0)
    return log_z - scale * row_dot(queries, docs[0], normalize)


def multiple_negatives_ranking_loss(queries, docs, *, scale, directions, partition_mode,
                                    hardness_mode, hardness_strength, reduction, normalize,
                                    impl):
    """Single process: queries (N, D), docs list of (N, D) (positives first). Returns the
    reduced loss."""
    cands = Candidates(None, docs, docs)
    rows = loss_rows(queries, docs, cands, scale, directions, partition_mode, hardness_mode,
                     hardness_strength, normalize, impl)
    return reduce_rows(rows, reduction)
