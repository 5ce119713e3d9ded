"""Running a sanitizer-instrumented test program: shared by the emulator's self-test
(test_cuda_emu_runtime.py) and the emulated engine's sanitizer builds
(engine_sanitizers.py). Each returns (exit code, stdout + stderr)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (its host-usable cuda_fp16.h), or None."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").is_file():
            return Path(home) / "include"
    return None


def run(binary, *args, env=None, prefix=(), timeout=120):
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run(list(prefix) + [str(binary), *args], capture_output=True, text=True,
                         timeout=timeout, env=full_env)
    return res.returncode, res.stdout + res.stderr


# ThreadSanitizer cannot start when the kernel maps the executable or libraries where its shadow
# memory must go (high mmap_rnd_bits with ASLR; "unexpected memory mapping"). Running the
# binary with ASLR disabled (setarch -R) is the documented workaround.
_TSAN_START_FAILURES = ("unexpected memory mapping", "FATAL: ThreadSanitizer: ")


def run_tsan(binary, *args, timeout=120):
    env = {"TSAN_OPTIONS": "halt_on_error=0 second_deadlock_stack=1 history_size=4"}
    rc, out = run(binary, *args, env=env, timeout=timeout)
    if not any(s in out for s in _TSAN_START_FAILURES):
        return rc, out
    setarch = shutil.which("setarch")
    if setarch is None:
        pytest.skip(f"ThreadSanitizer cannot start here and setarch is missing:\n{out[-1500:]}")
    rc2, out2 = run(binary, *args, env=env, prefix=(setarch, platform.machine(), "-R"),
                    timeout=timeout)
    if any(s in out2 for s in _TSAN_START_FAILURES) or "setarch:" in out2:
        pytest.skip("ThreadSanitizer cannot start here, even with ASLR disabled (setarch -R):\n"
                    f"{out[-1000:]}\n---\n{out2[-1000:]}")
    return rc2, out2


def run_asan(binary, *args, ubsan_halt=True, timeout=120):
    """ASan+UBSan run; ``ubsan_halt=False`` lets a planted shared-memory read that trips
    UBSan's bounds check first go on to AddressSanitizer's own report."""
    env = {"UBSAN_OPTIONS": f"halt_on_error={int(ubsan_halt)} print_stacktrace=1",
           "ASAN_OPTIONS": "detect_leaks=1"}
    rc, out = run(binary, *args, env=env, timeout=timeout)
    if "LeakSanitizer has encountered a fatal error" in out:  # no ptrace in some sandboxes
        env["ASAN_OPTIONS"] = "detect_leaks=0"
        rc, out = run(binary, *args, env=env, timeout=timeout)
    return rc, out
