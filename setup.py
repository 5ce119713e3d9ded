"""Build and install contrastive_kernels.

The Triton kernels need no build step. The C++ extensions in csrc/ (CPU always; CUDA when
torch has CUDA and nvcc is present) are added here as they land; a machine without CUDA
always gets a working install.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="contrastive_kernels",
    version="0.1.0",
    description="Fused, tiled contrastive losses (InfoNCE, NT-Xent, CLIP, SigLIP, SimCSE, "
                "SupCon, N-pair, triplet, contrastive) that never materialize the N×N matrix",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["contrastive_kernels", "contrastive_kernels.*"]),
    python_requires=">=3.9",
    # torch's Linux CUDA wheels bring a matching triton; the CPU-only wheels do not.
    install_requires=["torch>=2.4", "numpy", "triton>=3.0; platform_system == 'Linux'"],
    extras_require={"test": ["pytest>=7", "pytest-benchmark>=4"]},
    entry_points={"console_scripts": [
        "contrastive-kernels=contrastive_kernels.__main__:main"]},
)
