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
  CONTRASTIVE_KERNELS_BUILD_CACHE   folder of built extensions reused by later builds
                                    (default ~/.cache/contrastive_kernels/build; "0": off)

The build cache: an extension whose inputs are all unchanged (every file under csrc/, its
sources, flags and include folders, the torch, Python, compiler and nvcc versions) is
copied from the cache instead of compiled again: a clean clone (CI) skips minutes of nvcc.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP_CUDA_ENV = "CONTRASTIVE_KERNELS_SKIP_CUDA"
SKIP_EMU_ENV = "CONTRASTIVE_KERNELS_SKIP_EMU"
DEFAULT_ARCHS = "8.0;9.0"
BUILD_INFO = os.path.join(HERE, "contrastive_kernels", "_build_info.py")
BUILD_CACHE_ENV = "CONTRASTIVE_KERNELS_BUILD_CACHE"
BUILD_CACHE_KEEP = 4  # cached builds kept per extension (other branches, other flags)

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
    return exts, {"build_ext": _with_build_cache(
        BuildExtension.with_options(use_ninja=_have_ninja()))}


def _cache_dir():
    setting = os.environ.get(BUILD_CACHE_ENV, "")
    if setting == "0":
        return None
    return setting or os.path.join(os.path.expanduser("~"), ".cache", "contrastive_kernels",
                                   "build")


def _tool_version(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def _build_key(ext) -> str:
    """Hash of everything that decides an extension's binary (see the module doc)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    h = hashlib.sha256()
    for part in (ext.name, ext.sources, ext.include_dirs, ext.extra_compile_args,
                 ext.extra_link_args, ext.define_macros, ext.libraries, ext.library_dirs,
                 torch.__version__, torch.version.git_version, sys.version, platform.platform(),
                 os.environ.get("TORCH_CUDA_ARCH_LIST", ""), os.environ.get("CXX", ""),
                 _tool_version([os.environ.get("CXX", "c++"), "--version"]),
                 _tool_version([os.path.join(CUDA_HOME or "", "bin", "nvcc"), "--version"])):
        # The checkout's own path is not an input: another clone of the same commit hits.
        h.update(repr(part).replace(HERE, "<checkout>").encode() + b"\0")
    for root, dirs, files in os.walk(os.path.join(HERE, "csrc")):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, HERE).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:20]


def _with_build_cache(base):
    """``base`` (torch's BuildExtension) reusing cached builds of unchanged extensions."""

    class CachedBuildExtension(base):
        def build_extension(self, ext):
            cache = _cache_dir()
            if cache is None:
                return super().build_extension(ext)
            target = self.get_ext_fullpath(ext.name)
            entry = os.path.join(cache, f"{ext.name}-{_build_key(ext)}",
                                 os.path.basename(target))
            # (not gated on --force: torch sets it whenever ninja builds)
            if os.path.isfile(entry):
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                shutil.copy2(entry, target)
                _say(f"{ext.name}: inputs unchanged, reused the build in {entry}")
                return None
            result = super().build_extension(ext)
            _store(target, entry)
            return result

    return CachedBuildExtension


def _store(built, entry):
    """Put a fresh build in the cache (atomically) and drop the oldest of its kind."""
    folder = os.path.dirname(entry)
    try:
        os.makedirs(folder, exist_ok=True)
        shutil.copy2(built, entry + ".tmp")
        os.replace(entry + ".tmp", entry)
        prefix = os.path.basename(folder).rsplit("-", 1)[0] + "-"
        parent = os.path.dirname(folder)
        kinds = sorted((os.path.join(parent, d) for d in os.listdir(parent)
                        if d.startswith(prefix)), key=os.path.getmtime, reverse=True)
        for stale in kinds[BUILD_CACHE_KEEP:]:
            shutil.rmtree(stale, ignore_errors=True)
    except OSError as exc:  # a read-only or full cache never fails the build
        _say(f"build cache not written ({exc})")


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
