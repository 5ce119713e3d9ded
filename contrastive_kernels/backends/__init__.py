"""Kernel backends, one per platform, each implementing both engines' interface
(``engines/softmax.py``, ``engines/pairwise.py``): launch parameters and kernels.

- ``triton/``: the Triton kernels (the main GPU path; ``TRITON_INTERPRET=1`` runs them
  on CPU tensors);
- ``cuda.py``: the CUDA C++ extension (``csrc/cuda``);
- ``cpu.py``: the C++ CPU extension (``csrc/cpu``).

``dispatch.py`` chooses among them; ``engines/library.py`` imports them by name.
"""
