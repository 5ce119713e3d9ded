#!/usr/bin/env bash
# The one prepared GPU check: build for this GPU, the test suite on CUDA tensors (Triton and
# CUDA C++), the main job and short benchmarks, in under 11 minutes on one H100/H200 (the tile sweep
# included). Results go to $OUT (or benchmarks/.results).
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/.results}"
mkdir -p "$out"
{
  date -u +"%Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$out/machine.txt"

python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
# Build for this GPU only (the full 8.0;9.0 build is CI's job): minutes saved.
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
# --no-deps: the GPU machine has no network; torch, triton and pytest are already there.
TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=16 pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
python -m contrastive_kernels info | tee "$out/info.txt"

status=0
# Tests on CUDA tensors (conftest leaves TRITON_INTERPRET unset when CUDA is present).
# The AOT compile proof is CPU work and already runs in CI: skipped here.
timeout 180 python -m pytest tests -q -p no:cacheprovider --ignore=tests/test_aot.py \
  -x 2>&1 | tee "$out/tests.txt" | tail -15 || status=1
timeout 60 python -m contrastive_kernels check 2>&1 | tee "$out/check.txt" || status=1
timeout 60 python -m pytest benchmarks/bench_clip.py benchmarks/bench_nt_xent.py -q \
  -p no:cacheprovider -c benchmarks/pytest.ini -k "not torch-compiled and not N32768" \
  --benchmark-json="$out/bench.json" \
  --benchmark-columns=mean,stddev 2>&1 | tee "$out/bench.txt" | tail -20 || status=1
# Triton vs CUDA C++ vs eager and compiled reference (decides dispatch.CUDA_PREFERENCE).
# torch.compile costs a compile per shape: compiled reference at 16k only.
timeout 80 python benchmarks/engine_compare.py --n 16384 --d 256 1024 --dtype bfloat16 \
  --rounds 3 2>&1 | tee "$out/engines.md" || status=1
timeout 60 python benchmarks/engine_compare.py --n 65536 --d 256 1024 --dtype bfloat16 \
  --rounds 2 --no-compile 2>&1 | tee -a "$out/engines.md" || status=1
# The tile table was chosen from compiles and counted traffic; time a few candidates per
# problem here (CLIP, SigLIP, a queue at N = 16k–64k) and record the winners.
timeout 200 python benchmarks/tile_sweep.py --write 2>&1 | tee "$out/tile_sweep.md" || status=1
exit $status
