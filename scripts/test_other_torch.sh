#!/usr/bin/env bash
# The whole test-suite against another torch release, on the CPU (Triton interpreted), from
# a clean copy of HEAD: the lent GPU machines run torch 2.11.0 + Triton 3.6, and what breaks
# there only on the torch side (custom_op, dynamo) is found here, not in their 15 minutes.
#
#   bash scripts/test_other_torch.sh [VERSION]     # default 2.11.0; ~5 min + the download
#
# The venv and the worktree live under ${WORK:-/tmp/fastdyn-torch-VERSION}; a second run
# reuses them (the worktree is reset to HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-2.11.0}
work=${WORK:-/tmp/fastdyn-torch-$version}
repo=$PWD
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
# requirements.txt but torch (and setuptools, whose pin torch 2.11 does not admit; 77 and newer
# read the project's SPDX license string)
grep -vE "^(torch|setuptools)==" requirements.txt > "$work/requirements.txt"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$version" \
  "setuptools>=77" -r "$work/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
# a worktree left by another clone (ci-fresh's, since deleted) is not this repository's
common=$(cd "$(git rev-parse --git-common-dir)" && pwd)
if [ -d "$work/tree" ] && [ "$(cd "$work/tree" && cd "$(git rev-parse --git-common-dir 2> /dev/null)" 2> /dev/null && pwd)" != "$common" ]; then
  rm -rf "$work/tree" "$work/build.log"
  git worktree prune
fi
if [ -d "$work/tree" ]; then
  git -C "$work/tree" checkout -q --force --detach "$(git rev-parse HEAD)"
else
  git worktree add -q --detach "$work/tree" HEAD
fi
cd "$work/tree"
echo "== $(git log --oneline -1) against torch $version"
# CPU kernels only: the CUDA build would not be run here and takes 20 minutes on 2 cores
FASTDYN_CUDA=0 "$work/venv/bin/python" setup.py build_ext --inplace > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
"$work/venv/bin/python" -m fastdyn info | sed -n 1,2p  # (sed reads it all: head closed the pipe under a still-printing info)
# every failure's one-line summary, whatever their tracebacks' length (a tail had hidden 18 of 19)
status=0
TRITON_INTERPRET=1 "$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider -rf \
  > "$work/pytest.log" 2>&1 || status=$?
grep -E "^(FAILED|ERROR) " "$work/pytest.log" || true
tail -1 "$work/pytest.log"
echo "(worktree $work/tree of $repo, log $work/pytest.log; remove it with: git worktree remove --force $work/tree)"
exit $status
