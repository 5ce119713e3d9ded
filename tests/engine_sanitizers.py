"""Builds of the CUDA C++ engine's real kernels (csrc/cuda), compiled as host C++ against
the CPU emulation of the CUDA execution model (csrc/emu), under the sanitizers — each proven
able to fail. The tests are tests/test_cuda_emu_tsan.py and tests/test_cuda_emu_asan.py: two
files, so that pytest-xdist (--dist loadfile) runs the two sanitizer chains, build and run,
on two workers at once.

csrc/emu/tests/engine_driver.cpp calls the engine's host entry points (softmax forward with
CLIP column statistics and mask_diag, atomic and deterministic backward — rerun and compared
bitwise — and dQ-only / dK-only backward, SigLIP and Hadsell pairwise forward/backward,
batch-hard mining) on ragged shapes, split column ranges, two feature panels (D = 300) and a
35-tile range (two blocked-sum groups), in fp32 (SIMT), fp16 and bf16 (mma.sync from
ldmatrix, cp.async operand loads) and fp64, and checks each result against a float64 ATen
reference. It is linked with the two emulated engine translation units
(csrc/emu/softmax_engine_emu.cpp, pairwise_engine_emu.cpp) in two flavours, and each run
must also pass every check:

- ThreadSanitizer: no report on the real kernels (fp32 and bf16: TSAN_FILTER below);
- AddressSanitizer + UBSan: no report on the real kernels (every dtype).

There is no uninstrumented build: it ran the same checks as the ASan one, and the
uninstrumented kernels run in tests/test_cuda_emulated.py (through _C_cuda_emu). Both
flavours are -O1 with line tables only (-g1): the reports keep file:line, and the compiles
take about 40% less than with full debug information.

Planted bugs, made without touching the sources: a copy of one kernel source with one
textual mutation (the pattern must occur exactly once) is compiled in place of the original,
the other objects of the flavour are reused:

- "race" (ThreadSanitizer): softmax_engine_cuda.cu, fwd_kernel loses the __syncthreads()
  between the row pass (each warp writes the masked logits of its rows into sm.s) and the
  CLIP column pass (each thread reads one column of sm.s, i.e. every warp's rows);
- "oob" (AddressSanitizer): tile_products.cuh, the operand loader load_chunk guards its
  rows with `row <= n` instead of `row < n`, so a partial tile's cp.async reads one row past
  the end of the global feature tensor (the emulated cp.async reads its source at issue).

Builds are cached outside the repository, in
~/.cache/contrastive_kernels/emu_sanitizers/<flavour>-<hash>/ (mutants in a subfolder
named by the hash of the mutation), the hash covering the driver, csrc/emu, csrc/cuda,
csrc/*.h, the flags, the compiler and torch, so a fresh clone on the same machine reuses
them. The ThreadSanitizer build runs one OS thread per CUDA thread (it must see real
threads) and is the longest part; the ASan+UBSan build runs the emulator's fibers, with
AddressSanitizer told of every stack switch (about a minute, down from eight with OS
threads on two busy cores). A cold build adds six compiles of about a minute each and two
mutant compiles.
"""
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import sanitizer_run

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EMU = CSRC / "emu"
CUDA_SRC = CSRC / "cuda"
HEADER = EMU / "cuda_emu.h"
DRIVER = EMU / "tests" / "engine_driver.cpp"
TUS = {"softmax": EMU / "softmax_engine_emu.cpp", "pairwise": EMU / "pairwise_engine_emu.cpp"}
CACHE = Path(os.path.expanduser("~")) / ".cache" / "contrastive_kernels" / "emu_sanitizers"
CXX = shutil.which("g++")
BUILD_TIMEOUT = 900
RUN_TIMEOUT = 900


_cuda_include = sanitizer_run.cuda_include


def _torch():
    """(version, include dir, lib dir, C++11 ABI flag) of the installed torch, or None."""
    try:
        import torch
    except ImportError:
        return None
    base = Path(torch.__file__).resolve().parent
    inc, lib = base / "include", base / "lib"
    if not (inc / "ATen" / "ATen.h").is_file() or not (lib / "libtorch_cpu.so").is_file():
        return None
    return torch.__version__, inc, lib, int(torch._C._GLIBCXX_USE_CXX11_ABI)


CUDA_INCLUDE = _cuda_include()
TORCH = _torch()

SKIPS = [
    pytest.mark.skipif(CXX is None,
                       reason="g++ is not installed: the CUDA emulation is built with g++"),
    pytest.mark.skipif(CUDA_INCLUDE is None,
                       reason="no CUDA toolkit headers (/usr/local/cuda/include/cuda_fp16.h): the "
                              "emulation takes __half/__nv_bfloat16 from them"),
    pytest.mark.skipif(TORCH is None, reason="no torch with its C++ headers and libtorch_cpu.so"),
]

TSAN = ["-fsanitize=thread", "-g1", "-O1"]
ASAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g1", "-O1"]
FLAVOURS = {"tsan": TSAN, "asan": ASAN}

# name: (flavour, file mutated (under csrc/cuda), pattern (exactly once), replacement,
#        engine TU it replaces, the kernel source that TU compiles)
MUTANTS = {
    # fwd_kernel: the row pass writes sm.s[r][c] (masked logits) by the warp owning row r; the
    # column pass then reads sm.s[0..BM)[c] — rows of every warp. Without this barrier a
    # column thread reads other warps' rows while they are being written.
    "race": ("tsan", "softmax_engine_cuda.cu",
             "      __syncthreads();\n      if (p.need_col) {",
             "      if (p.need_col) {",
             "softmax", "softmax_engine_cuda.cu"),
    # load_chunk: rows of a partial tile at or past n must be zero-filled (cp.async with no
    # source bytes); `row <= n` copies row n, one row past the end of the feature tensor
    # (N = 70 and M = 45 are not multiples of 64).
    "oob": ("asan", "tile_products.cuh",
            "    const bool valid = row < n && col < D;\n",
            "    const bool valid = row <= n && col < D;\n",
            "softmax", "softmax_engine_cuda.cu"),
}


def _compiler_id():
    out = subprocess.run([CXX, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()[0] if out.stdout else CXX


def _sources():
    """Every source file a build depends on (relative path, bytes), in a fixed order."""
    files = [DRIVER, *TUS.values(), *sorted(EMU.glob("*.h")), *sorted(CUDA_SRC.iterdir()),
             *sorted(CSRC.glob("*.h"))]
    return [(str(p.relative_to(ROOT)), p.read_bytes()) for p in files if p.is_file()]


def _common_flags():
    version, inc, lib, abi = TORCH
    return ["-std=c++20", "-pthread", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-I", str(CSRC),
            "-isystem", str(inc)]


def _engine_flags(flavour):
    return (_common_flags() + ["-DCK_CUDA_EMULATE", "-include", str(HEADER), "-I",
                               str(CUDA_INCLUDE)] + FLAVOURS[flavour])


def _link_flags(flavour):
    lib = TORCH[2]
    return FLAVOURS[flavour] + ["-pthread", "-L", str(lib), f"-Wl,-rpath,{lib}", "-ltorch",
                                "-ltorch_cpu", "-lc10"]


def _key(flavour):
    h = hashlib.sha256()
    h.update(_compiler_id().encode())
    version, inc, lib, abi = TORCH
    h.update(f"torch {version} {inc} {abi}".encode())
    for flags in (_engine_flags(flavour), _link_flags(flavour)):
        # the checkout's location is not part of the key: another clone reuses the build
        h.update("\0".join(flags).replace(str(ROOT), "<root>").encode())
    for rel, data in _sources():
        h.update(rel.encode() + b"\0" + data)
    fp16 = CUDA_INCLUDE / "cuda_fp16.h"
    h.update(f"{fp16}:{fp16.stat().st_size}:{fp16.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _compile(cmd, out, what, flavour):
    """Run a compile/link command writing `out` atomically (a temporary name, then rename)."""
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    res = subprocess.run(cmd + ["-o", str(tmp)], capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT, cwd=ROOT)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        log = res.stdout + res.stderr
        if any(s in log for s in ("cannot find", "libtsan", "libasan", "libubsan")):
            pytest.skip(f"the sanitizer runtime of {CXX} is not installed: {log[-500:]}")
        pytest.fail(f"building {what} ({flavour}) failed:\n{' '.join(cmd)}\n{log[-6000:]}")
    os.replace(tmp, out)


def objects(flavour):
    """The flavour's folder with driver.o, softmax.o, pairwise.o and the linked driver."""
    out_dir = CACHE / f"{flavour}-{_key(flavour)}"
    binary = out_dir / "engine_driver"
    if binary.is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    driver_o = out_dir / "driver.o"
    if not driver_o.is_file():
        _compile([CXX] + _common_flags() + FLAVOURS[flavour] + ["-Wall", "-c", str(DRIVER)],
                 driver_o, "the driver", flavour)
    for name, tu in TUS.items():
        obj = out_dir / f"{name}.o"
        if not obj.is_file():
            _compile([CXX] + _engine_flags(flavour) + ["-c", str(tu)], obj, tu.name, flavour)
    _compile([CXX, str(driver_o), str(out_dir / "softmax.o"), str(out_dir / "pairwise.o")]
             + _link_flags(flavour), binary, "engine_driver", flavour)
    for stale in CACHE.glob(f"{flavour}-*"):  # older builds of this flavour
        if stale != out_dir and stale.name[len(flavour) + 1:].isalnum():
            shutil.rmtree(stale, ignore_errors=True)
    for retired in CACHE.glob("plain-*"):  # the flavour this file no longer builds
        shutil.rmtree(retired, ignore_errors=True)
    return out_dir


def mutant(name):
    """The driver linked with one mutated engine TU (the flavour's other objects reused)."""
    flavour, target, pattern, replacement, tu, kernel_src = MUTANTS[name]
    base = objects(flavour)
    original = (CUDA_SRC / target).read_text()
    count = original.count(pattern)
    assert count == 1, (f"mutant {name}: the pattern occurs {count} times in csrc/cuda/{target} "
                        f"(must be exactly once):\n{pattern}")
    mutated = original.replace(pattern, replacement)
    h = hashlib.sha256("\0".join(MUTANTS[name]).encode() + mutated.encode()).hexdigest()[:12]
    out_dir = base / f"mutant-{name}-{h}"
    binary = out_dir / "engine_driver"
    if binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # The mutated file, plus verbatim copies of the kernel source that includes it (its quoted
    # includes then find the mutant next to it first; everything else comes through -I
    # csrc/cuda, where "../engine_host.h" from tile_products.cuh still resolves).
    (out_dir / target).write_text(mutated)
    if kernel_src != target:
        shutil.copyfile(CUDA_SRC / kernel_src, out_dir / kernel_src)
    wrapper = out_dir / f"{tu}_engine_mutant.cpp"
    wrapper.write_text(f'// mutant "{name}" of csrc/cuda/{target}\n#include "{kernel_src}"\n')
    obj = out_dir / f"{tu}.o"
    _compile([CXX] + _engine_flags(flavour) + ["-I", str(CUDA_SRC), "-c", str(wrapper)], obj,
             f"mutant {name}", flavour)
    objs = [str(obj if t == tu else base / f"{t}.o") for t in TUS]
    _compile([CXX, str(base / "driver.o"), *objs] + _link_flags(flavour), binary,
             f"mutant {name}", flavour)
    return binary


run_tsan = functools.partial(sanitizer_run.run_tsan, timeout=RUN_TIMEOUT)
run_asan = functools.partial(sanitizer_run.run_asan, timeout=RUN_TIMEOUT)


def all_passed(out):
    return any(line.startswith("engine_driver: all ") and "checks passed" in line
               for line in out.splitlines())


# The groups the ThreadSanitizer run takes: every shape and entry point in fp32 and bf16.
# The kernels have two synchronization structures, chosen by kTensorCores<In> in
# csrc/cuda/tile_products.cuh: the SIMT path (fp32, fp64: same barriers, only the
# accumulator type differs) and the mma.sync/ldmatrix/cp.async path (fp16, bf16: only the
# element conversion differs). One dtype of each reaches every barrier and shared-memory
# hand-off; running all four doubled the longest test of the suite (TSan keeps one OS thread
# per CUDA thread) and pushed CI past its budget. AddressSanitizer runs all four, since
# element widths change the addresses.
TSAN_FILTER = "fp32/,bf16/"

# The groups the mutants run: the fp32 softmax forward/backward on the ragged shapes (CLIP
# column statistics on; partial row and column tiles), enough to reach both planted bugs.
MUTANT_FILTER = "fp32/ragged/softmax"
