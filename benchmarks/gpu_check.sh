#!/usr/bin/env bash
# Everything a lent GPU machine (H100/H200, torch 2.11, CUDA 13, no internet) should do,
# in as few device calls as possible:
#
#   bash benchmarks/gpu_check.sh build-test   # build for sm_90, fastdyn info, all tests (CUDA + Triton)
#   bash benchmarks/gpu_check.sh bench        # GPU benchmarks (gpt-1b, gpt2-small, 1000-small)
#   bash benchmarks/gpu_check.sh all          # both (fits one 10-minute call only if the build is warm)
#
# Logs and results go to $OUT (the device tool brings them back) or benchmarks/results/;
# commit benchmarks/results/<date>-<gpu>.json and the test summary afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
stage=${1:-all}

build_test() {
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
    2>&1 | tee "$OUT/env.txt"
  echo "== build (sm $TORCH_CUDA_ARCH_LIST)"
  start=$(date +%s)
  if ! FASTDYN_NO_EXT=1 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
     || ! $PY setup.py build_ext --inplace >> "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; return 1
  fi
  echo "built in $(( $(date +%s) - start )) s"
  $PY -m fastdyn info | tee -a "$OUT/env.txt"
  echo "== tests (native CUDA, Triton compiled, CPU)"
  $PY -m pytest tests -q -p no:cacheprovider -o addopts="-ra" 2>&1 | tee "$OUT/tests.log" | tail -40
}

bench() {
  gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
  file="$OUT/$(date -u +%Y-%m-%d)-$gpu.json"
  $PY -m fastdyn bench --sets gpt-1b,gpt2-small,1000-small --json "$file" 2>&1 | tee "$OUT/bench.log" | tail -30
}

case "$stage" in
  build-test) build_test ;;
  bench) bench ;;
  all) build_test && bench ;;
  *) echo "usage: $0 build-test|bench|all" >&2; exit 2 ;;
esac
