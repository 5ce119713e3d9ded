"""The two tiled engines every kernel-backed loss runs on, and their custom operators.

- ``softmax.py``: row (and column) log-sum-exps and positive sums of ``scale·⟨q̂, k̂⟩``;
- ``pairwise.py``: per-pair terms without row statistics (SigLIP, Hadsell) and
  batch-hard mining;
- ``library.py``: the ``torch.library`` operators (namespace ``contrastive_kernels``)
  with fake kernels and autograd, through which every kernel call goes; they look up the
  backend module (``backends/<name>``) by name.
"""
