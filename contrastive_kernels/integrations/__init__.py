"""Drop-in adapters that meet users inside the libraries they already train with.

Each module here is a thin adapter over the public functions of ``contrastive_kernels``
and imports its peer library lazily (an optional extra in setup.py); none has a kernel
or an engine call of its own.
"""
