#!/usr/bin/env bash
# The one prepared GPU check: the test suite on CUDA tensors, the main job and a short
# benchmark, in under 8 minutes on one H100/H200. Results go to $OUT (or benchmarks/.results).
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
pip install -q -e ".[test]" 2>&1 | tail -2

status=0
# Tests on CUDA tensors (conftest leaves TRITON_INTERPRET unset when CUDA is present).
# The AOT compile proof is CPU work and already runs in CI: skipped here.
timeout 240 python -m pytest tests -q -p no:cacheprovider --ignore=tests/test_aot.py \
  -x 2>&1 | tee "$out/tests.txt" | tail -15 || status=1
timeout 90 python -m contrastive_kernels check 2>&1 | tee "$out/check.txt" || status=1
timeout 120 python -m pytest benchmarks/bench_clip.py benchmarks/bench_nt_xent.py -q \
  -p no:cacheprovider -c benchmarks/pytest.ini --benchmark-json="$out/bench.json" \
  --benchmark-columns=mean,stddev 2>&1 | tee "$out/bench.txt" | tail -20 || status=1
exit $status
