"""The CUDA C++ engine's real kernels on the CPU emulator under AddressSanitizer + UBSan:
clean, every check of csrc/emu/tests/engine_driver.cpp passing on every entry point and
dtype, and able to catch a planted out-of-bounds load (builds and mutants:
tests/engine_sanitizers.py)."""
import engine_sanitizers as es

pytestmark = es.SKIPS

# One check per entry point and dtype family, which the run must have passed.
ENTRY_POINTS = ("fp32/ragged.forward.clse", "fp16/masked.backward.atomic.dq",
                "fp64/tile.backward.deterministic.dq+dk",
                "fp32/ragged.siglip.backward.atomic.dk",
                "fp16/ragged.hadsell.backward.deterministic.dparams", "fp32/tile.hardest.neg")


def test_engine_is_clean_under_asan_ubsan():
    rc, out = es.run_asan(es.objects("asan") / "engine_driver")
    for report in ("AddressSanitizer", "runtime error", "LeakSanitizer"):
        assert report not in out, out[-12000:]
    assert rc == 0, out[-8000:]
    assert es.all_passed(out), out[-8000:]
    for name in ENTRY_POINTS:
        assert f"ok   {name} " in out, (name, out[-8000:])


def test_asan_catches_the_shifted_row_guard():
    rc, out = es.run_asan(es.mutant("oob"), es.MUTANT_FILTER)
    assert rc != 0, out[-8000:]
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out, out[-8000:]
    assert "load_chunk" in out, out[-8000:]  # in the mutated operand loader
