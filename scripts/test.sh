#!/usr/bin/env bash
# The test command: sets up the environment (scripts/setup.sh), then runs the C++ unit
# tests (CMake + ctest) and the Python test-suite. Without a GPU, CUDA tests are skipped
# with a reason and the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1).
# Extra arguments go to pytest (e.g. -k lamb, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== C++ tests (CMake, ctest)"
TORCH_DIR=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ABI=$(.venv/bin/python -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
cmake -S . -B build-cmake -DFASTDYN_TORCH_DIR="$TORCH_DIR" -DFASTDYN_CXX11_ABI="$ABI" > build-cmake.log 2>&1 \
  || { cat build-cmake.log; exit 1; }
cmake --build build-cmake -j"$(nproc)" >> build-cmake.log 2>&1 || { tail -50 build-cmake.log; exit 1; }
ctest --test-dir build-cmake --output-on-failure

echo "== Python tests"
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
.venv/bin/python -m pytest tests -q "$@"
