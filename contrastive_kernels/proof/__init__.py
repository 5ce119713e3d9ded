"""Static GPU proof tooling, never imported by the library itself.

- ``aot.py``: compiles every Triton kernel variant the launcher can pick for sm_80/sm_90
  and reads registers, spills and tensor-core instructions from the cubins;
- ``cuda_resources.py``: the same reading of the built CUDA C++ extension's cubins.

Used by ``tests/test_aot.py``, ``tests/test_cuda_build.py`` and the reports in
``benchmarks/``.
"""
