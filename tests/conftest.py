"""Test-session setup. Runs before any test module imports contrastive_kernels."""
import os

import torch

# Without a GPU the Triton kernels run under the interpreter on CPU tensors. The flag must
# be set before triton.jit decorates the kernels, i.e. before contrastive_kernels imports.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Kernel outputs start as NaN, so an element a kernel never writes fails the comparison.
os.environ["CONTRASTIVE_KERNELS_POISON"] = "1"
