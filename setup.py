"""Build and install contrastive_kernels.

Three kernel families: Triton (no build step), the C++ CPU engine (always built) and the
CUDA C++ engine (built when torch has CUDA and nvcc is found). A machine without CUDA gets
a clear message and a working CPU build, never a failure.

A fourth, test-only extension, ``_C_cuda_emu``, compiles the CUDA C++ engine's own sources
with the host compiler against a CPU emulation of the CUDA execution model (csrc/emu), so
its kernels execute without a GPU (``CONTRASTIVE_KERNELS_CUDA_EMULATE=1``). It needs only
the CUDA toolkit's headers (cuda_fp16.h and friends); without them it is skipped, saying why.

Environment:
  CONTRASTIVE_KERNELS_SKIP_CUDA=1   do not build the CUDA extension even where possible
  CONTRASTIVE_KERNELS_SKIP_EMU=1    do not build the CUDA emulation extension
  TORCH_CUDA_ARCH_LIST              CUDA archs to build (default "8.0;9.0": Ampere, Hopper)
  CUDA_HOME                         where nvcc lives (torch's own lookup otherwise)
"""
import os
import platform
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP_CUDA_ENV = "CONTRASTIVE_KERNELS_SKIP_CUDA"
SKIP_EMU_ENV = "CONTRASTIVE_KERNELS_SKIP_EMU"
DEFAULT_ARCHS = "8.0;9.0"
BUILD_INFO = os.path.join(HERE, "contrastive_kernels", "_build_info.py")

CPU_SOURCES = ["csrc/cpu/softmax_engine_cpu.cpp", "csrc/cpu/pairwise_engine_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda/bindings.cpp", "csrc/cuda/softmax_engine_cuda.cu",
                "csrc/cuda/pairwise_engine_cuda.cu"]
# -fopenmp: at::parallel_for is header code, parallel only when the extension itself is
# compiled with OpenMP (at run time it shares torch's libgomp.so.1). -fno-trapping-math lets
# the compiler if-convert the exp clamps (torch builds with it too); it changes no result.
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
LINK_FLAGS = ["-fopenmp"]
if platform.machine() in ("x86_64", "AMD64"):
    # The AVX-512 clone of the tile loops (csrc/cpu/vec_math.h) uses full 512-bit vectors:
    # measured 20–30% faster exp passes than GCC's default 256-bit preference.
    CXX_FLAGS.append("-mprefer-vector-width=512")
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
# The emulation build: the CUDA sources as host C++, the emulator force-included first.
EMU_SOURCES = ["csrc/emu/bindings_emu.cpp", "csrc/emu/softmax_engine_emu.cpp",
               "csrc/emu/pairwise_engine_emu.cpp"]
EMU_FLAGS = ["-O2", "-std=c++20", "-DCK_CUDA_EMULATE", "-pthread",
             "-include", os.path.join(HERE, "csrc", "emu", "cuda_emu.h")]


def _long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def _say(msg):
    print(f"[contrastive_kernels] {msg}", file=sys.stderr)


def _cuda_plan():
    """(build CUDA?, archs, reason when not)."""
    if os.environ.get(SKIP_CUDA_ENV) == "1":
        return False, "", f"skipped: {SKIP_CUDA_ENV}=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False, "", "torch is not installed at build time"
    if not torch.version.cuda:
        return False, "", f"torch {torch.__version__} is a CPU-only build"
    nvcc = os.path.join(CUDA_HOME or "", "bin", "nvcc")
    if not CUDA_HOME or not os.path.exists(nvcc):
        return False, "", "nvcc not found (set CUDA_HOME to a CUDA toolkit)"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    # torch's extension builder reads the variable; without it, it would target only the
    # visible GPU (or every arch it knows on a machine without one).
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return True, archs, ""


def _emu_plan():
    """(build the emulation extension?, CUDA include dir, reason when not)."""
    if os.environ.get(SKIP_EMU_ENV) == "1":
        return False, "", f"skipped: {SKIP_EMU_ENV}=1"
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        CUDA_HOME = None
    for root in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        include = os.path.join(root or "", "include")
        if root and all(os.path.exists(os.path.join(include, h))
                        for h in ("cuda_fp16.h", "cuda_bf16.h", "vector_types.h")):
            return True, include, ""
    return False, "", "the CUDA toolkit headers (cuda_fp16.h) were not found (set CUDA_HOME)"


def _write_build_info(cpu, cuda, archs, cuda_reason, emu=False, emu_reason=""):
    with open(BUILD_INFO, "w", encoding="utf-8") as f:
        f.write('"""Written by setup.py: what this install built."""\n')
        f.write(f"CPU_BUILT = {cpu!r}\nCUDA_BUILT = {cuda!r}\nCUDA_ARCHS = {archs!r}\n"
                f"CUDA_REASON = {cuda_reason!r}\nEMU_BUILT = {emu!r}\n"
                f"EMU_REASON = {emu_reason!r}\n")


def _extensions():
    """The extension modules and the build command class; ([], {}) without torch."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say("torch is not installed yet: building without the C++ extensions "
             "(install torch first, then reinstall to get them)")
        _write_build_info(False, False, "", "torch is not installed at build time")
        return [], {}
    include = [os.path.join(HERE, "csrc")]
    exts = [CppExtension("contrastive_kernels._C_cpu", CPU_SOURCES, include_dirs=include,
                         extra_compile_args=CXX_FLAGS, extra_link_args=LINK_FLAGS)]
    cuda, archs, reason = _cuda_plan()
    if cuda:
        _say(f"building the CUDA extension for TORCH_CUDA_ARCH_LIST={archs}")
        arch_define = f'-DCK_CUDA_ARCHS="{archs}"'
        exts.append(CUDAExtension(
            "contrastive_kernels._C_cuda", CUDA_SOURCES, include_dirs=include,
            extra_compile_args={"cxx": CXX_FLAGS + [arch_define],
                                "nvcc": NVCC_FLAGS + [arch_define]},
            extra_link_args=LINK_FLAGS))
    else:
        _say(f"not building the CUDA extension ({reason}); the CPU extension and the "
             "Triton kernels are built as usual")
    emu, emu_include, emu_reason = _emu_plan()
    if emu:
        exts.append(CppExtension("contrastive_kernels._C_cuda_emu", EMU_SOURCES,
                                 include_dirs=include + [emu_include],
                                 extra_compile_args=EMU_FLAGS, extra_link_args=["-pthread"]))
    else:
        _say(f"not building the CUDA emulation extension ({emu_reason})")
    _write_build_info(True, cuda, archs, reason, emu, emu_reason)
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=_have_ninja())}


def _have_ninja():
    try:
        from torch.utils.cpp_extension import is_ninja_available
        return is_ninja_available()
    except ImportError:
        return False


EXT_MODULES, CMDCLASS = _extensions()

setup(
    name="contrastive_kernels",
    version="0.2.0",
    description="Fused, tiled contrastive losses (InfoNCE, NT-Xent, CLIP, SigLIP, SimCSE, "
                "SupCon, N-pair, triplet, contrastive) that never materialize the N×N matrix",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["contrastive_kernels", "contrastive_kernels.*"]),
    python_requires=">=3.9",
    # torch's Linux CUDA wheels bring a matching triton; the CPU-only wheels do not.
    install_requires=["torch>=2.4", "numpy", "triton>=3.0; platform_system == 'Linux'"],
    # The examples' dependencies are part of "test": the test suite runs the examples.
    # "peers": the libraries the benchmarks compare against (benchmarks/peers.py).
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "pytest-benchmark>=4", "hypothesis", "scikit-learn",
                             "tqdm", "matplotlib", "sentence-transformers[train]>=6,<7",
                             "lightly>=1.6,<1.7"],
                    # The drop-ins of contrastive_kernels.integrations (imported lazily).
                    "sentence-transformers": ["sentence-transformers>=6,<7"],
                    "lightly": ["lightly>=1.6,<1.7"],
                    "pytorch-metric-learning": ["pytorch-metric-learning>=2,<3"],
                    "peers": ["open_clip_torch", "pytorch-metric-learning", "info-nce-pytorch",
                              "inf-cl"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    entry_points={"console_scripts": [
        "contrastive-kernels=contrastive_kernels.__main__:main"]},
)
