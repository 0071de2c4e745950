"""Every Triton kernel variant compiles for an H100 (sm_90) here, without a GPU (the tests
otherwise run the kernels in Triton's interpreter, which compiles nothing), with IEEE
division and square roots as the CUDA kernels have."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastdyn.ops.backend import triton_available

SCRIPT = Path(__file__).with_name("triton_gpu_compile.py")


@pytest.mark.triton
@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_every_triton_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])  # fastdyn, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    uncovered = rows.pop()["uncovered"]
    assert not uncovered, f"kernels with no variant in {SCRIPT.name}: {uncovered}"
    assert len(rows) > 100
    failed = {r["variant"]: r["error"] for r in rows if "error" in r}
    assert not failed, failed
    approximate = {r["variant"]: r["counts"] for r in rows
                   if {"div.full.f32", "div.approx", "sqrt.approx"} & set(r["counts"])}
    assert not approximate, approximate
    # the norm, Adam and LAMB kernels divide and take roots (a count of 0 would mean the
    # PTX was not what this test reads)
    assert any("div.rn.f32" in r["counts"] for r in rows)
    assert any("sqrt.rn.f32" in r["counts"] for r in rows)
