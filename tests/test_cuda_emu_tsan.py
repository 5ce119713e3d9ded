"""The CUDA C++ engine's real kernels on the CPU emulator under ThreadSanitizer: clean on
every entry point and shape of csrc/emu/tests/engine_driver.cpp in both of the engine's
synchronization structures, and able to catch a planted race (builds and mutants:
tests/engine_sanitizers.py)."""
import re

import engine_sanitizers as es

pytestmark = es.SKIPS


def test_engine_is_race_free_under_tsan():
    rc, out = es.run_tsan(es.objects("tsan") / "engine_driver", es.TSAN_FILTER)
    assert "ThreadSanitizer" not in out, out[-12000:]
    assert rc == 0, out[-8000:]
    assert es.all_passed(out), out[-8000:]
    ran = {m.group(1) for m in re.finditer(r"^time (\w+)/", out, re.M)}
    assert ran == {"fp32", "bf16"}, ran  # the SIMT and the tensor-core paths, nothing else


def test_tsan_catches_the_dropped_syncthreads():
    rc, out = es.run_tsan(es.mutant("race"), es.MUTANT_FILTER)
    assert "WARNING: ThreadSanitizer: data race" in out, out[-8000:]
    assert "fwd_kernel" in out, out[-8000:]  # the race is the kernel's, not the emulator's
    assert rc != 0, out[-8000:]
