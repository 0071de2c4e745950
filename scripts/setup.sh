#!/usr/bin/env bash
# Creates the environment of the README's commands: .venv at the repository root with the
# pinned dependencies (requirements.txt), fastdyn installed in editable mode, and its
# extension built: the CPU kernels always, the CUDA kernels when a CUDA toolkit is found
# (CUDA_HOME, else /usr/local/cuda*) -- no GPU is needed to build them.
# Running it again only rebuilds what changed (ninja, in build/).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
deps_ok() {
  .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, sys
for line in pathlib.Path("requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        if m.version(name) != version:
            sys.exit(1)
PY
}
if ! deps_ok; then
  echo "== installing pinned dependencies (requirements.txt)"
  # (this workplace's pip config names local indexes that may be missing: drop its warnings)
  "${PIP[@]}" install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  deps_ok || { echo "installing requirements.txt failed" >&2; exit 1; }
fi

if ! .venv/bin/python -c "import importlib.metadata as m; m.version('fastdyn')" 2>/dev/null; then
  echo "== installing fastdyn (editable)"
  FASTDYN_NO_EXT=1 "${PIP[@]}" install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import importlib.metadata as m; m.version('fastdyn')" \
    || { echo "installing fastdyn failed" >&2; exit 1; }
fi

echo "== building the extension (log: build.log)"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if ! .venv/bin/python setup.py build_ext --inplace > build.log 2>&1; then
  grep -E "error|Error" build.log | head -30
  tail -30 build.log
  echo "building the extension failed (full log: build.log)" >&2
  exit 1
fi
grep "^fastdyn:" build.log || true
# (a CPU-only build has no -gencode: grep's status 1 must not end the script under pipefail)
archs=$(grep -o "code=sm_[0-9a]*" build.log | sort -u | tr '\n' ' ' || true)
[ -n "$archs" ] && echo "CUDA kernels compiled (nvcc -gencode): $archs"
.venv/bin/python -c "import fastdyn" || { echo "fastdyn does not import after the build" >&2; exit 1; }
.venv/bin/fastdyn info
