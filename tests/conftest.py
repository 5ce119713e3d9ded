"""Test-session setup. Runs before any test module imports contrastive_kernels."""
import os

import torch

# Without a GPU the Triton kernels run under the interpreter on CPU tensors. The flag must
# be set before triton.jit decorates the kernels, i.e. before contrastive_kernels imports.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Kernel outputs start as NaN, so an element a kernel never writes fails the comparison.
os.environ["CONTRASTIVE_KERNELS_POISON"] = "1"

# The files with the longest serial chains (a sanitizer build and run, the emulated harness in
# a child pytest, AOT compiles) go first, so that pytest-xdist (--dist loadfile hands out
# files in collection order) starts them at once and the short files fill the other worker
# around them; collected alphabetically they started last and ran alone at the end.
_LONG_FIRST = ("test_cuda_emu_tsan.py", "test_cuda_emu_asan.py", "test_cuda_emulated.py",
               "test_aot.py", "test_cuda_build.py", "test_cuda_emu_runtime.py",
               "test_cuda_traffic.py")


def pytest_configure(config):
    # pytest-xdist (3.x) reorders --dist loadfile's files by test count, largest first,
    # unless told not to: the 2-test sanitizer files then started last and ran alone at the
    # end (the ThreadSanitizer run, ~6 minutes, with the other worker idle). Keep the order
    # below instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
