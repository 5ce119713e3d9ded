"""The CPU emulation of the CUDA execution model (csrc/emu/cuda_emu.h): its standalone
self-test (csrc/emu/tests/emu_selftest.cpp: barriers, warp collectives, atomics, wmma, the
PTX-level cp.async / ldmatrix / mma.sync m16n8k16 against the PTX ISA's fragment layouts,
the traffic counters) built with g++ and run in both execution models (fibers, the default;
one OS thread per CUDA thread with -DCK_EMU_OS_THREADS), under ThreadSanitizer (OS threads)
and under AddressSanitizer+UBSan (fibers, annotated) — clean — and in the planted-bug variants
the sanitizers must catch (a removed __syncthreads(), reads past a __shared__ array and past
a global buffer).

Binaries are cached in build/emu_selftest/<variant>-<hash>/, the hash covering the emulation
headers, the self-test source, the flags and the compiler, so only a change rebuilds. Cold
(six builds, ASan+UBSan the slowest) about a minute on two busy cores; cached, the runs
alone (the ThreadSanitizer one dominates) take well under half a minute."""
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import sanitizer_run

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "csrc" / "emu"
HEADER = EMU / "cuda_emu.h"
SOURCE = EMU / "tests" / "emu_selftest.cpp"
CACHE = ROOT / "build" / "emu_selftest"
CXX = shutil.which("g++")
BUILD_TIMEOUT = 300
RUN_TIMEOUT = 120


_cuda_include = sanitizer_run.cuda_include


CUDA_INCLUDE = _cuda_include()

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="g++ is not installed: the CUDA emulation is built with g++"),
    pytest.mark.skipif(CUDA_INCLUDE is None,
                       reason="no CUDA toolkit headers (/usr/local/cuda/include/cuda_fp16.h): the "
                              "emulation takes __half/__nv_bfloat16 from them"),
]

TSAN = ["-fsanitize=thread", "-g", "-O1"]
ASAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
VARIANTS = {
    "plain": ["-O1", "-Wall", "-Wextra"],
    "threads": ["-O1", "-Wall", "-Wextra", "-DCK_EMU_OS_THREADS"],
    "tsan": TSAN,
    "tsan-race": TSAN + ["-DPLANT_RACE"],
    "asan": ASAN,
    "asan-oob": ASAN + ["-DPLANT_OOB"],
}


def _compiler_id():
    out = subprocess.run([CXX, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()[0] if out.stdout else CXX


def _build(variant):
    """The cached binary of a variant, compiled if the sources/flags/compiler changed."""
    flags = ["-std=c++20", "-pthread", "-include", str(HEADER), "-I", str(CUDA_INCLUDE)]
    flags += VARIANTS[variant]
    h = hashlib.sha256()
    h.update(_compiler_id().encode())
    h.update("\0".join(flags).encode())
    for path in sorted(EMU.rglob("*.h")) + [SOURCE]:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    fp16 = CUDA_INCLUDE / "cuda_fp16.h"
    h.update(f"{fp16}:{fp16.stat().st_size}:{fp16.stat().st_mtime_ns}".encode())
    out_dir = CACHE / f"{variant}-{h.hexdigest()[:16]}"
    binary = out_dir / "emu_selftest"
    if binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"emu_selftest.tmp{os.getpid()}"
    cmd = [CXX] + flags + [str(SOURCE), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=ROOT)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        log = res.stdout + res.stderr
        sanitizer = "-fsanitize" in " ".join(VARIANTS[variant])
        if sanitizer and ("cannot find" in log or "libtsan" in log or "libasan" in log
                          or "libubsan" in log):
            pytest.skip(f"the sanitizer runtime of {CXX} is not installed: {log[-500:]}")
        pytest.fail(f"building {variant} failed:\n{' '.join(cmd)}\n{log[-6000:]}")
    os.replace(tmp, binary)  # atomic: a concurrent session sees a complete binary or none
    for stale in CACHE.glob(f"{variant}-*"):  # older builds of this variant
        if stale != out_dir and stale.name[len(variant) + 1:].isalnum():
            shutil.rmtree(stale, ignore_errors=True)
    return binary


_run = functools.partial(sanitizer_run.run, timeout=RUN_TIMEOUT)
_run_tsan = functools.partial(sanitizer_run.run_tsan, timeout=RUN_TIMEOUT)
_run_asan = functools.partial(sanitizer_run.run_asan, timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def asan_oob():
    return _build("asan-oob")


@pytest.mark.parametrize("variant,model", [("plain", "fibers"), ("threads", "os-threads")])
def test_selftest_passes(variant, model):
    """Both execution models (fibers by default, one OS thread per CUDA thread under
    ThreadSanitizer or -DCK_EMU_OS_THREADS) pass every check, deadlocks and divergence
    included."""
    rc, out = _run(_build(variant))
    assert rc == 0, out
    assert f"emu_selftest: all checks passed ({model})" in out, out
    for name in ("indices", "barriers", "sync_count", "syncwarp", "shuffles", "atomics", "wmma",
                 "ptx", "traffic", "misc", "errors"):
        assert any(line.split()[:2] == [name, "ok"] for line in out.splitlines()), (name, out)


def test_selftest_is_race_free_under_tsan():
    rc, out = _run_tsan(_build("tsan"))
    assert "ThreadSanitizer" not in out, out[-8000:]
    assert rc == 0, out[-8000:]
    assert "emu_selftest: all checks passed (os-threads)" in out, out[-8000:]


def test_tsan_catches_the_planted_race():
    rc, out = _run_tsan(_build("tsan-race"))
    assert "WARNING: ThreadSanitizer: data race" in out, out[-8000:]
    assert "racy_kernel" in out, out[-8000:]  # the race is the kernel's, not the emulator's
    assert rc != 0


def test_selftest_is_clean_under_asan_ubsan():
    rc, out = _run_asan(_build("asan"))
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-8000:]
    assert rc == 0, out[-8000:]
    assert "emu_selftest: all checks passed (fibers)" in out, out[-8000:]


@pytest.mark.parametrize("where,kind", [("shared", "global-buffer-overflow"),
                                        ("global", "heap-buffer-overflow")])
def test_asan_catches_the_planted_out_of_bounds_read(asan_oob, where, kind):
    rc, out = _run_asan(asan_oob, where, ubsan_halt=False)
    assert rc != 0, out[-8000:]
    assert "AddressSanitizer" in out and kind in out, out[-8000:]
    assert "_oob_kernel" in out, out[-8000:]
