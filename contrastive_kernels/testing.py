"""Tolerances and comparison helpers, imported by the tests and the benchmarks alike.

Errors are measured against a float64 reference computed on the same (upcast) inputs, as
``max|actual − expected| / max(max|expected|, floor)``: relative to the tensor's scale,
so a gradient entry that is tiny by cancellation does not demand impossible digits.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# SPEC §4. float64 is the gradcheck dtype: kernels accumulate in fp64 there.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    "tf32": 3e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}
_FLOOR = 1e-30


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The allowed relative error for inputs of ``dtype`` on ``device``."""
    if dtype == torch.float32 and torch.device(device).type == "cuda" \
            and torch.backends.cuda.matmul.allow_tf32:
        return TOLERANCES["tf32"]
    return TOLERANCES[dtype]


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = _FLOOR) -> float:
    """max|actual − expected| / max(max|expected|, floor), computed in float64.

    ``floor`` gives a quantity that is a sum of cancelling terms the scale of its terms
    (see ``scalar_grad_floor``), since its own size says nothing about attainable digits.
    """
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if e.numel() == 0:
        return 0.0
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    if nan_mismatch.any():
        return float("inf")
    infinite = torch.isinf(e)
    if (a[infinite] != e[infinite]).any():
        return float("inf")  # an infinity (an empty candidate set's -inf) must be matched
    finite = ~torch.isnan(e) & ~infinite
    if not finite.any():
        return 0.0
    diff = (a[finite] - e[finite]).abs().max().item()
    scale = max(e[finite].abs().max().item(), floor, _FLOOR)
    return diff / scale


def scalar_grad_floor(upstream: torch.Tensor, loss: torch.Tensor) -> float:
    """Scale of dL/dθ for a 0-dim parameter θ (temperature, logit_scale): Σ|g_i·ℓ_i|.

    Such a gradient sums O(N·M) terms of both signs (for one class of SupCon it is 1e-8
    from terms of 10²): measured against its own size, fp32 noise of 1e-5 would look like
    a 100% error, in PyTorch's own fp32 graph as much as in the kernels.
    """
    return float((upstream.double() * loss.detach().double()).abs().sum())


def assert_close(actual, expected, dtype: torch.dtype, what: str,
                 device: torch.device | str = "cpu", floor: float = _FLOOR) -> None:
    """Fail with the measured error when it exceeds the table's tolerance for ``dtype``."""
    err = relative_error(actual, expected, floor)
    tol = tolerance(dtype, device)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})")


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (elements) any PyTorch operator produces while active,
    and the operator that produced it: the detector behind the no-N×M memory claim.

    ``floating_only`` skips integer tensors: the Triton interpreter moves kernel arguments
    through O(N·D) byte views, which are no similarity values (the main job's display);
    the memory test counts every tensor.
    """

    def __init__(self, floating_only: bool = False):
        super().__init__()
        self.floating_only = floating_only
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        body = _custom_op_body(func)
        if body is not None:
            # Our kernels run inside custom operators (engines/library.py); a dispatch mode
            # sees an operator's outputs, not what it allocates inside. Run the body with
            # this mode active again, so every tensor made inside is counted too.
            with self:
                out = body(*args, **(kwargs or {}))
        else:
            out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if self.floating_only and not t.dtype.is_floating_point:
                continue
            if t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def _custom_op_body(func):
    """The Python function behind one of our custom operators (None for any other op)."""
    if getattr(func, "namespace", None) != "contrastive_kernels":
        return None
    from .engines import library
    op = getattr(library, func._opname, None)
    return getattr(op, "_init_fn", None)


def tiny_sentence_transformer(path, hidden: int = 32, layers: int = 2, dropout: float = 0.1,
                              vocab_words: int = 200, seed: int = 0, max_seq_length: int = 64):
    """A randomly initialized BERT sentence-transformers model (mean pooling) built and
    saved under ``path`` with no download: the vocabulary is ``w0 … w{vocab_words-1}``
    plus BERT's special tokens. For tests, examples and benchmarks; needs
    sentence-transformers and transformers."""
    import os
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_words)]
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(words))
    config = BertConfig(vocab_size=len(words), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=max_seq_length,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(path)
    BertTokenizerFast(vocab).save_pretrained(path)
    transformer = Transformer(path, max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


def random_sentences(count: int, gen: torch.Generator, vocab_words: int = 200,
                     min_words: int = 3, max_words: int = 12) -> list[str]:
    """``count`` sentences of random words of tiny_sentence_transformer's vocabulary."""
    lengths = torch.randint(min_words, max_words + 1, (count,), generator=gen).tolist()
    return [" ".join(f"w{int(w)}" for w in torch.randint(0, vocab_words, (n,), generator=gen))
            for n in lengths]
