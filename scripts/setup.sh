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
if ! .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, re, sys
for line in pathlib.Path("requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = re.split(r"==", line)
    if m.version(name) != version:
        sys.exit(1)
PY
then
  echo "== installing pinned dependencies (requirements.txt)"
  "${PIP[@]}" install -q -r requirements.txt
fi

if ! .venv/bin/python -c "import importlib.metadata as m; m.version('fastdyn')" 2>/dev/null; then
  echo "== installing fastdyn (editable)"
  FASTDYN_NO_EXT=1 "${PIP[@]}" install -q --no-build-isolation --no-deps -e .
fi

echo "== building the extension"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
.venv/bin/python setup.py -q build_ext --inplace 2>&1 | grep -v -E "SetuptoolsDeprecationWarning|^!!|^\s*\*+|^\s*$|Please consider|See https|by 2026|warnings.warn|self._finalize|dist._finalize|_Deprecat" || true
.venv/bin/python -c "import fastdyn" || { echo "fastdyn does not import after the build" >&2; exit 1; }
.venv/bin/fastdyn info
