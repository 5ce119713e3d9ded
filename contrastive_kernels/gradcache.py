"""Gradient caching (Gao et al. 2021): a contrastive loss over a batch whose encoder
activations do not fit in memory, with the gradients of one full-graph backward.

The loss couples every row with every other, so the batch cannot simply be split into
independent steps. GradCache splits only the *encoder* work:

1. encode every input chunk by chunk without a graph (activations of one chunk alive at a
   time), recording each chunk's random state, and keep the (N, D) embeddings;
2. compute the loss on the embeddings and backpropagate it to them (and to anything else
   the loss uses, such as a learnable ``logit_scale``); with a tiled loss this needs
   O(N·D) memory, not O(N²);
3. encode each chunk again with the graph, its random state replayed (same dropout masks),
   and backpropagate the cached embedding gradient of that chunk.

Only step 3's chunk graphs carry parameter gradients, and the sum of their backwards is the
full backward, exactly (linearity of the chain rule).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

__all__ = ["GradCache"]


class _RandomState:
    """The CPU generator's state and that of every CUDA device the chunk's tensors use,
    restorable inside a forked random state (as torch.utils.checkpoint does)."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.cpu = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states)
            yield


def _tensors_of(chunk) -> list[torch.Tensor]:
    if isinstance(chunk, torch.Tensor):
        return [chunk]
    return [v for v in chunk.values() if isinstance(v, torch.Tensor)]


def split_input(value, chunk_size: int) -> list:
    """A tensor (N, ...) or a mapping of tensors with N rows (tokenizer output; other
    values are passed to every chunk) as a list of chunks of at most chunk_size rows."""
    if isinstance(value, torch.Tensor):
        return list(torch.split(value, chunk_size))
    if not isinstance(value, Mapping):
        raise TypeError(f"GradCache inputs must be tensors or mappings of tensors, got "
                        f"{type(value).__name__}")
    rows = {v.shape[0] for v in value.values() if isinstance(v, torch.Tensor) and v.dim()}
    if len(rows) != 1:
        raise ValueError(f"GradCache: the tensors of a mapping input must share their first "
                         f"dimension, got sizes {sorted(rows)}")
    n = rows.pop()
    return [{k: (v[start:start + chunk_size] if isinstance(v, torch.Tensor) and v.dim()
                 else v) for k, v in value.items()} for start in range(0, n, chunk_size)]


def _call(encoder, chunk):
    return encoder(**chunk) if isinstance(chunk, Mapping) else encoder(chunk)


def _no_sync(encoder, skip: bool):
    """DistributedDataParallel's no_sync while ``skip`` (not this encoder's last chunk)."""
    if skip and isinstance(encoder, torch.nn.parallel.DistributedDataParallel):
        return encoder.no_sync()
    return contextlib.nullcontext()


class GradCache:
    """``GradCache(encoders, loss_fn, chunk_size)(*inputs)``: the detached loss, with every
    parameter's ``.grad`` (and that of tensors ``loss_fn`` uses) accumulated exactly as one
    backward through a plain chunked forward would.

    encoders: one module (callable) for every input, or a sequence of one per input; each
    maps a chunk (a tensor, or a mapping passed as keyword arguments) to a tensor with the
    chunk's rows first. loss_fn(*embeddings) -> 0-dim loss, embeddings in input order.
    chunk_size: rows per encoder call. scaler: an optional ``torch.amp.GradScaler``; the
    backward then runs on the scaled loss (call ``scaler.step`` / ``update`` as usual).

    The random state is consumed exactly as a plain chunked forward (inputs in order,
    chunks in order) consumes it, and each chunk's is replayed for its second forward;
    buffers (BatchNorm running statistics) keep the values of the first pass. Under
    ``torch.autocast`` both passes run with the caller's autocast. Encoders wrapped in
    DistributedDataParallel synchronize gradients only on their last chunk. Memory: one
    chunk's activations at a time plus the embeddings.
    """

    def __init__(self, encoders: Callable | Sequence[Callable], loss_fn: Callable[..., Any],
                 chunk_size: int, scaler=None):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable")
        self.encoders = encoders
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.scaler = scaler

    def _encoder_list(self, count: int) -> list:
        if callable(self.encoders) and not isinstance(self.encoders, (list, tuple)):
            return [self.encoders] * count
        encoders = list(self.encoders)
        if len(encoders) != count:
            raise ValueError(f"GradCache got {count} inputs but {len(encoders)} encoders "
                             "(pass one encoder, or one per input)")
        return encoders

    def __call__(self, *inputs) -> torch.Tensor:
        """inputs: tensors (N_i, ...) or mappings of them. Returns the loss, detached."""
        if not inputs:
            raise ValueError("GradCache needs at least one input")
        encoders = self._encoder_list(len(inputs))
        chunks = [split_input(x, self.chunk_size) for x in inputs]
        embeddings, states = self._encode_without_graph(encoders, chunks)
        buffers = _buffer_snapshot(encoders)
        loss = self.loss_fn(*embeddings)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a 0-dim tensor")
        if not torch.is_grad_enabled():
            return loss.detach()
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._replay_with_graph(encoders, chunks, embeddings, states)
        _buffer_restore(buffers)
        return loss.detach()

    def _encode_without_graph(self, encoders, chunks):
        embeddings, states = [], []
        for encoder, input_chunks in zip(encoders, chunks):
            parts, input_states = [], []
            for chunk in input_chunks:
                input_states.append(_RandomState(_tensors_of(chunk)))
                with torch.no_grad():
                    parts.append(_call(encoder, chunk))
            embeddings.append(torch.cat(parts).detach().requires_grad_())
            states.append(input_states)
        return embeddings, states

    def _replay_with_graph(self, encoders, chunks, embeddings, states):
        # Each DDP encoder synchronizes on the last chunk it backpropagates.
        last_use = {id(e): (i, len(c) - 1) for i, (e, c) in enumerate(zip(encoders, chunks))
                    if embeddings[i].grad is not None}
        for i, (encoder, input_chunks) in enumerate(zip(encoders, chunks)):
            grad = embeddings[i].grad
            if grad is None:
                continue  # the loss did not use this input
            start = 0
            for j, (chunk, state) in enumerate(zip(input_chunks, states[i])):
                with state.replay(), _no_sync(encoder, last_use[id(encoder)] != (i, j)):
                    out = _call(encoder, chunk)
                    rows = out.shape[0]
                    out.backward(grad[start:start + rows].to(out.dtype))
                start += rows


def _buffer_snapshot(encoders) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every buffer of the module encoders, after the first pass."""
    seen, out = set(), []
    for encoder in encoders:
        if isinstance(encoder, torch.nn.Module):
            for buf in encoder.buffers():
                if id(buf) not in seen:
                    seen.add(id(buf))
                    out.append((buf, buf.detach().clone()))
    return out


def _buffer_restore(snapshot) -> None:
    with torch.no_grad():
        for buf, saved in snapshot:
            buf.copy_(saved)
