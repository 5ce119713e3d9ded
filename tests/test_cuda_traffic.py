"""Traffic counts of the CUDA C++ engine (contrastive_kernels/proof/cuda_traffic.py), on its
CPU emulation build: exact against hand-computed bytes and FLOPs on a tiny problem, the
record contract, and proof that the exact check catches a planted miscount.

The emulation build counts every global-memory access the kernel code requests through the
helpers of csrc/cuda/memory.cuh (gload / gstore / gatomic_add / cp_async) and 2·m·n·k per tile
product. The hand counts below follow the kernels' structure (tile_products.cuh): for fp32,
n = 70, m = 45, D = 40 there is one 64×64 column tile (no column split), one feature panel of
P = 64 columns (D rounded up to the 32-column chunk), two row blocks of 64 and 6 rows.

The planted miscount: csrc/emu/tests/traffic_driver.cpp runs the same problem outside Python,
compiled once with csrc/cuda/softmax_engine_cuda.cu as it is and once with a copy in which
fwd_kernel reads the row keys without the counted helper; the first must match the hand
counts exactly, the second must not (its forward reports 70·8 bytes fewer). Builds are cached
in ~/.cache/contrastive_kernels/traffic_driver/ keyed by the sources, flags and compiler
(about two minutes cold on two cores, for both).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contrastive_kernels import _build_info

import sanitizer_run

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_SRC = CSRC / "cuda"
EMU = CSRC / "emu"
DRIVER = EMU / "tests" / "traffic_driver.cpp"
CACHE = Path(os.path.expanduser("~")) / ".cache" / "contrastive_kernels" / "traffic_driver"
CXX = shutil.which("g++")
CUDA_INCLUDE = sanitizer_run.cuda_include()

needs_emu = pytest.mark.skipif(not getattr(_build_info, "EMU_BUILT", False),
                               reason="the CUDA emulation extension was not built: "
                                      f"{getattr(_build_info, 'EMU_REASON', '')}")

N, M, D = 70, 45, 40
BM = BN = 64
P = 64  # the feature panel: D rounded up to the 32-column chunk
F32, I64 = 4, 8


def expected_launches() -> list[dict]:
    """The hand-computed records of forward (no CLIP columns, no extra logit) + backward
    (one pass, dK by atomics) + the two normalization backwards, fp32, in launch order."""
    rows = [BM, N - BM]  # valid rows of the two row blocks
    tile_flops = 2 * BM * BN * P  # one 64×64 tile over the padded panel
    # fwd_kernel: the scale (thread 0), per row rq + row_key, the owned panel (valid rows ×
    # D columns: zero-filled padding is not read), the one column tile's panel, per column
    # rk + col_key; stores lse + pos per row.
    fwd_loaded = sum(F32 + r * (F32 + I64) + r * D * F32 + M * D * F32 + M * (F32 + I64)
                     for r in rows)
    fwd = dict(kernel="fwd_kernel<float>", programs=2, bytes_loaded=fwd_loaded,
               bytes_stored=N * 2 * F32, bytes_atomic=0, flops=2 * tile_flops, num_warps=4)
    # bwd_kernel<float, TRANSPOSED=false, ATOMIC_B=true, HAS_COL=false>: per row ra, row_key,
    # lse, g_lse, g_pos; per column rb, col_key; both panels; stores dQ rows once (one group,
    # one split: a plain store) and the dscale partials; dK by one atomic per element.
    bwd_loaded = sum(F32 + r * (4 * F32 + I64) + r * D * F32 + M * D * F32 + M * (F32 + I64)
                     for r in rows)
    bwd = dict(kernel="bwd_kernel<float, false, true, false>", programs=2,
               bytes_loaded=bwd_loaded, bytes_stored=N * D * F32 + N * F32,
               bytes_atomic=2 * M * D * F32, flops=2 * 3 * tile_flops, num_warps=4)

    def norm_bwd(n):
        # one warp per row: every lane reads scale and r; two passes read x and G per element
        return dict(kernel="norm_backward_kernel<float>", programs=(n + 3) // 4,
                    bytes_loaded=n * (32 * 2 * F32 + D * 4 * F32), bytes_stored=n * D * F32,
                    bytes_atomic=0, flops=0, num_warps=4)

    return [fwd, bwd, norm_bwd(N), norm_bwd(M)]


_CHILD = r"""
import json, os, sys
os.environ["CONTRASTIVE_KERNELS_CUDA_EMULATE"] = "1"
import torch
from contrastive_kernels import _C_cuda_emu as ext
from contrastive_kernels.proof.cuda_traffic import count_cuda_launches, KEYS
n, m, d = 70, 45, 40
gen = torch.Generator().manual_seed(7)
q, k = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
row_key, col_key = torch.arange(n) % 5, torch.arange(m) % 5
scale = torch.tensor(10.0)
rq, rk = ext.inverse_norms(q, True), ext.inverse_norms(k, True)
with count_cuda_launches() as outer:
    with count_cuda_launches() as fwd:
        lse, pos, clse, _ = ext.forward(q, k, rq, rk, scale, row_key, col_key, None, False,
                                        False, 1)
    g, e = torch.randn(n, generator=gen), torch.empty(0)
    ext.backward(q, k, rq, rk, scale, row_key, col_key, lse, e, g, g, e, False, True, False)
with count_cuda_launches() as after:
    pass
print(json.dumps({"fwd": fwd, "all": outer, "after": after, "keys": list(KEYS)}))
"""


def _run_child() -> dict:
    env = dict(os.environ, CONTRASTIVE_KERNELS_CUDA_EMULATE="1")
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def child():
    return _run_child()


@needs_emu
def test_counts_match_the_hand_computed_bytes_and_flops(child):
    assert child["all"] == expected_launches()


@needs_emu
def test_records_are_plain_dicts_with_exactly_the_keys(child):
    for r in child["all"]:
        assert list(r) == child["keys"]
        assert set(r) == {"kernel", "programs", "bytes_loaded", "bytes_stored",
                          "bytes_atomic", "flops", "num_warps"}
    # nested uses see their own launches; nothing is recorded after the block closed
    assert child["fwd"] == child["all"][:1]
    assert child["after"] == []


def test_counting_needs_the_emulated_engine():
    code = ("import os; os.environ.pop('CONTRASTIVE_KERNELS_CUDA_EMULATE', None)\n"
            "from contrastive_kernels.proof.cuda_traffic import count_cuda_launches\n"
            "try:\n    count_cuda_launches().__enter__()\n"
            "except RuntimeError as e:\n    print('refused:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "CONTRASTIVE_KERNELS_CUDA_EMULATE"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "CONTRASTIVE_KERNELS_CUDA_EMULATE" in res.stdout


# --- the planted miscount ------------------------------------------------------------------
# fwd_kernel reads row i's key through gload; the mutant reads it directly (uncounted).
MUTATION = ("      v.ka[r] = ok ? gload(&p.row_key[i]) : 0;\n",
            "      v.ka[r] = ok ? p.row_key[i] : 0;\n")


def _torch_paths():
    import torch
    base = Path(torch.__file__).resolve().parent
    return base / "include", base / "lib", int(torch._C._GLIBCXX_USE_CXX11_ABI)


def _build_driver(mutant: bool) -> Path:
    inc, lib, abi = _torch_paths()
    source = (CUDA_SRC / "softmax_engine_cuda.cu").read_text()
    if mutant:
        assert source.count(MUTATION[0]) == 1, "the mutation's pattern must occur exactly once"
        source = source.replace(*MUTATION)
    flags = ["-std=c++20", "-O1", "-pthread", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             "-DCK_CUDA_EMULATE", "-include", str(EMU / "cuda_emu.h")]
    h = hashlib.sha256()
    out = subprocess.run([CXX, "--version"], capture_output=True, text=True, timeout=60)
    h.update(out.stdout.encode() + "\0".join(flags).encode() + str(inc).encode())
    for path in [DRIVER, *sorted(EMU.glob("*.h")), *sorted(CUDA_SRC.iterdir()),
                 *sorted(CSRC.glob("*.h"))]:
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    h.update(source.encode())
    out_dir = CACHE / f"{'mutant' if mutant else 'original'}-{h.hexdigest()[:16]}"
    binary = out_dir / "traffic_driver"
    if binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "softmax_engine_cuda.cu").write_text(source)
    tmp = out_dir / f"traffic_driver.tmp{os.getpid()}"
    cmd = [CXX, *flags, "-I", str(out_dir), "-I", str(CUDA_SRC), "-I", str(CSRC), "-I",
           str(CUDA_INCLUDE), "-isystem", str(inc), str(DRIVER), "-L", str(lib),
           f"-Wl,-rpath,{lib}", "-ltorch", "-ltorch_cpu", "-lc10", "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        pytest.fail(f"building the traffic driver failed:\n{' '.join(cmd)}\n"
                    f"{(res.stdout + res.stderr)[-6000:]}")
    os.replace(tmp, binary)
    for stale in CACHE.glob(f"{'mutant' if mutant else 'original'}-*"):
        if stale != out_dir:
            shutil.rmtree(stale, ignore_errors=True)
    return binary


def _driver_records(binary: Path) -> list[dict]:
    res = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(CXX is None or CUDA_INCLUDE is None,
                    reason="needs g++ and the CUDA toolkit's headers (the emulation build)")
def test_a_planted_miscount_is_caught():
    original = _driver_records(_build_driver(mutant=False))
    assert original == expected_launches()  # the driver itself counts exactly
    mutant = _driver_records(_build_driver(mutant=True))
    assert mutant != expected_launches()  # ... and the exact check fails on the mutant
    assert mutant[0]["bytes_loaded"] == expected_launches()[0]["bytes_loaded"] - N * I64
    assert mutant[1:] == expected_launches()[1:]
