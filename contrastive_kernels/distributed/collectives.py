"""Communication for the multi-process losses (SPEC §3): an autograd all-gather and the
ring versions of the two tiled engines.

Each rank holds its local rows. Two ways to meet the global candidates:

- ``"gather"``: :class:`AllGatherRows` concatenates every rank's rows (uneven counts
  allowed); its backward all-reduces the gradient of the gathered tensor and keeps this
  rank's slice, so each rank's inputs receive the gradient of *every* rank's loss (open_clip
  ``gather_with_grad=True``).
- ``"ring"``: :class:`RingSoftmax` / :class:`RingPairwise` keep only the local key block
  and pass blocks to the next rank by point-to-point ops (the next block is in flight while
  the current one is computed); row log-sum-exps (or pair sums) are merged block by block.
  The backward runs the ring again with a gradient accumulator travelling with each block,
  which arrives home after a full circle. No rank ever holds the global keys.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.distributed as dist

DIST_MODES = ("gather", "ring")


def rank_and_size(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


class PeerError(RuntimeError):
    """A rank of the group did not take part in a loss's collectives."""


def row_counts(n: int, device, group) -> list[int]:
    """Every rank's local row count (one small all-gather). This is each distributed
    loss's first collective: a peer that never arrives fails here, after the group's
    timeout, with an error that says so (instead of an opaque transport message)."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    try:
        dist.all_gather(out, mine, group=group)
    except RuntimeError as exc:
        rank, size = rank_and_size(group)
        raise PeerError(f"contrastive_kernels: rank {rank} of {size} could not exchange "
                        f"batch sizes with every rank of the group — a peer failed to join "
                        f"this loss or has left (the group's timeout bounds the wait): "
                        f"{exc}") from exc
    return [int(t) for t in out]


def _gather_padded(x: torch.Tensor, counts: list[int], group) -> torch.Tensor:
    """cat over ranks of x (rows may differ per rank): padded to the largest count, since
    all_gather needs equal shapes, then trimmed."""
    most = max(counts)
    pad = x.new_zeros((most - x.shape[0],) + tuple(x.shape[1:]))
    chunks = [x.new_empty((most,) + tuple(x.shape[1:])) for _ in counts]
    dist.all_gather(chunks, torch.cat([x, pad]).contiguous(), group=group)
    return torch.cat([c[:k] for c, k in zip(chunks, counts)])


class AllGatherRows(torch.autograd.Function):
    """x (n_r, ...) on each rank -> (Σ n_r, ...) rows of all ranks in rank order."""

    @staticmethod
    def forward(ctx, x, counts, group):
        ctx.counts, ctx.group = counts, group
        return _gather_padded(x, counts, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # Σ over ranks of d(their loss)/d(rows)
        rank = dist.get_rank(ctx.group)
        start = sum(ctx.counts[:rank])
        return grad[start:start + ctx.counts[rank]], None, None


def all_gather_rows(x: torch.Tensor, group, counts: list[int] | None = None):
    """Gathered rows (autograd-aware) and the per-rank counts."""
    counts = counts if counts is not None else row_counts(x.shape[0], x.device, group)
    return AllGatherRows.apply(x, counts, group), counts


def all_gather_labels(y: torch.Tensor, group, counts: list[int]) -> torch.Tensor:
    return _gather_padded(y, counts, group)


class _Ring:
    """Send to rank+1, receive from rank-1: a list of tensors per hop, shapes announced by
    the (known) per-rank row counts."""

    def __init__(self, group, counts: list[int]):
        self.group = group
        self.rank, self.size = rank_and_size(group)
        self.counts = counts
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def owner(self, step: int) -> int:
        """The rank whose block this rank holds at ``step``."""
        return (self.rank - step) % self.size

    def start(self, tensors: list[torch.Tensor], step: int):
        """Begin passing this step's tensors on; returns (requests, receive buffers) for the
        block of the next step (owner(step + 1))."""
        rows = self.counts[self.owner(step + 1)]
        bufs = [t.new_empty((rows,) + tuple(t.shape[1:])) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, b, self.prev, self.group) for b in bufs]
        return dist.batch_isend_irecv(ops), bufs

    @staticmethod
    def finish(reqs):
        for r in reqs:
            r.wait()

    def each_block(self, k, keys, compute) -> None:
        """compute(step, block, block_keys) for every rank's (non-empty) key block, in ring
        order starting with this rank's own; the next block is in flight meanwhile."""
        block = k
        for step in range(self.size):
            pending = self.start([block, keys], step) if step < self.size - 1 else None
            if block.shape[0]:
                compute(step, block, keys)
            if pending is not None:
                self.finish(pending[0])
                block, keys = pending[1]

    def each_block_with_grad(self, k, keys, dtype, compute) -> torch.Tensor:
        """The backward ring: compute(step, block, block_keys) returns the block's key
        gradient, added to an accumulator that travels with the block and, after a full
        circle, is returned here to its owner: dk (k's shape, ``dtype``)."""
        block, acc = k, torch.zeros(k.shape, dtype=dtype, device=k.device)
        for step in range(self.size):
            # The next block travels while this one is computed; its accumulator follows
            # once this rank has added to it.
            ahead = None if step == self.size - 1 else self.start([block, keys], step)
            if block.shape[0]:
                acc += compute(step, block, keys).to(dtype)
            if self.size == 1:  # a group of one: nothing travels
                break
            reqs, bufs = self.start([acc], step)
            self.finish(reqs)
            if ahead is None:  # last step: the accumulator that arrived is this rank's own
                acc = bufs[0]
            else:
                self.finish(ahead[0])
                (block, keys), acc = ahead[1], bufs[0]
        return acc


def _dense(grad, like):
    return torch.zeros_like(like) if grad is None else grad.to(like.dtype).contiguous()


class RingSoftmax(torch.autograd.Function):
    """The softmax engine over ring-passed key blocks: (q, k_local, scale, extra) ->
    (lse (n,), pos (n,)) of the local rows against the keys of every rank.

    ``mask_home``: leave out j == i in the home block (k_local's first n rows are q's own
    rows, as in NT-Xent and SupCon)."""

    @staticmethod
    def forward(ctx, q, k, scale, extra, row_key, col_key, mask_home: bool, normalize: bool,
                impl: ModuleType, group, counts):
        ring = _Ring(group, counts)
        rq = impl.inverse_norms(q, normalize)
        acc = rq.dtype
        n = q.shape[0]
        lse = extra.clone() if extra is not None else torch.full((n,), float("-inf"),
                                                                 dtype=acc, device=q.device)
        pos = torch.zeros(n, dtype=acc, device=q.device)
        stats = [lse, pos]

        def add_block(step, block, keys):
            rk = impl.inverse_norms(block, normalize)
            b_lse, b_pos, _, _ = impl.forward(q, block, rq, rk, scale, row_key, keys, None,
                                              mask_home and step == 0, False)
            stats[0] = torch.logaddexp(stats[0], b_lse)
            stats[1] = stats[1] + b_pos

        ring.each_block(k, col_key, add_block)
        lse, pos = stats
        ctx.save_for_backward(q, k, rq, scale, extra, row_key, col_key, lse)
        ctx.args = (mask_home, normalize, impl, group, counts)
        return lse, pos

    @staticmethod
    def backward(ctx, g_lse, g_pos):
        q, k, rq, scale, extra, row_key, col_key, lse = ctx.saved_tensors
        mask_home, normalize, impl, group, counts = ctx.args
        ring = _Ring(group, counts)
        g_lse, g_pos = _dense(g_lse, lse), _dense(g_pos, lse)
        empty = lse.new_empty(0)
        deterministic = torch.are_deterministic_algorithms_enabled()
        dq = torch.zeros(q.shape, dtype=lse.dtype, device=q.device)
        dscale = torch.zeros((), dtype=lse.dtype, device=q.device)

        def block_grad(step, block, keys):
            nonlocal dscale
            rk = impl.inverse_norms(block, normalize)
            b_dq, b_dk, b_ds = impl.backward(q, block, rq, rk, scale, row_key, keys, lse, empty,
                                             g_lse, g_pos, empty, mask_home and step == 0,
                                             normalize, deterministic)
            dq.add_(b_dq.to(dq.dtype))
            dscale = dscale + b_ds.to(dscale.dtype)
            return b_dk

        dk = ring.each_block_with_grad(k, col_key, lse.dtype, block_grad)
        d_extra = None
        if extra is not None and ctx.needs_input_grad[3]:
            d_extra = (g_lse * torch.exp(extra - lse)).to(extra.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dscale.to(scale.dtype), d_extra,
                None, None, None, None, None, None, None)


class RingPairwise(torch.autograd.Function):
    """The pairwise engine over ring-passed key blocks: (q, k_local, params) -> rows (n,)
    (per local row, the sum of its pair terms against the keys of every rank)."""

    @staticmethod
    def forward(ctx, q, k, params, row_key, col_key, kind: int, mask_home: bool,
                normalize: bool, impl: ModuleType, group, counts):
        ring = _Ring(group, counts)
        rq = impl.inverse_norms(q, normalize)
        rows = torch.zeros(q.shape[0], dtype=rq.dtype, device=q.device)

        def add_block(step, block, keys):
            rk = impl.inverse_norms(block, normalize)
            rows.add_(impl.pair_forward(kind, q, block, rq, rk, params, row_key, keys,
                                        mask_home and step == 0))

        ring.each_block(k, col_key, add_block)
        ctx.save_for_backward(q, k, rq, params, row_key, col_key)
        ctx.args = (kind, mask_home, normalize, impl, group, counts)
        return rows

    @staticmethod
    def backward(ctx, g_row):
        q, k, rq, params, row_key, col_key = ctx.saved_tensors
        kind, mask_home, normalize, impl, group, counts = ctx.args
        ring = _Ring(group, counts)
        g_row = _dense(g_row, rq)
        deterministic = torch.are_deterministic_algorithms_enabled()
        dq = torch.zeros(q.shape, dtype=rq.dtype, device=q.device)
        dparams = torch.zeros(3, dtype=rq.dtype, device=q.device)

        def block_grad(step, block, keys):
            rk = impl.inverse_norms(block, normalize)
            _, b_dq, b_dk, b_dp = impl.pair_backward(kind, q, block, rq, rk, params, row_key,
                                                     keys, g_row, mask_home and step == 0,
                                                     normalize, False, deterministic)
            dq.add_(b_dq.to(dq.dtype))
            dparams.add_(b_dp.to(dparams.dtype))
            return b_dk

        dk = ring.each_block_with_grad(k, col_key, rq.dtype, block_grad)
        return (dq.to(q.dtype), dk.to(k.dtype), dparams.to(params.dtype),
                None, None, None, None, None, None, None, None)
