"""The `fastdyn` command line, run as users run it (`python -m fastdyn ...`, a new process)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastdyn


def fastdyn_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastdyn", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_info_reports_versions_backends_and_gpus():
    out = fastdyn_cli("info", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["torch"] == torch.__version__ and d["fastdyn"] == fastdyn.__version__
    assert d["backends"]["cpu"]["built"] is True
    assert d["backends"]["cuda"]["built"] == fastdyn._extension.WITH_CUDA
    if d["backends"]["cuda"]["built"]:
        assert d["backends"]["cuda"]["archs"], "a CUDA build names its architectures"
    assert len(d["gpus"]) == torch.cuda.device_count()
    text = fastdyn_cli("info")
    assert text.returncode == 0 and "backends:" in text.stdout and "triton" in text.stdout


@pytest.mark.slow
def test_demo_trains_the_model_to_copy():
    out = fastdyn_cli("demo", "--device", "cpu")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the model learned to copy" in out.stdout
    # the per-tensor statistics of the fused step are printed: a trust ratio range per line
    assert "trust r min/max" in out.stdout


def test_bench_writes_a_results_file(tmp_path):
    path = tmp_path / "results.json"
    out = fastdyn_cli("bench", "--quick", "--only", "norm,lars", "--sets", "1000-small",
                      "--device", "cpu", "--json", str(path), env={"FASTDYN_BENCH_SCALE": "0.01"})
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(path.read_text())
    assert d["environment"]["torch"] == torch.__version__
    assert [r["op"] for r in d["results"]] == ["norm", "lars"]
    for r in d["results"]:
        assert r["baseline"] in r["speedup_vs"] and r["speedup_vs"][r["baseline"]] > 0
        assert r["gb_s"] > 0 and r["fraction_of_bandwidth"] > 0
        assert f"| {r['op']} | 1000-small |" in out.stdout


def test_bench_in_bfloat16(tmp_path):
    path = tmp_path / "results.json"
    out = fastdyn_cli("bench", "--quick", "--only", "adamw", "--sets", "1000-small", "--device",
                      "cpu", "--dtype", "bfloat16", "--json", str(path),
                      env={"FASTDYN_BENCH_SCALE": "0.01"})
    assert out.returncode == 0, out.stderr[-2000:]
    (r,) = json.loads(path.read_text())["results"]
    assert r["dtype"] == "bfloat16" and r["bytes_per_elem"] == 14  # AdamW's 28 B at 2 B/elem
    assert "| adamw (bfloat16) | 1000-small |" in out.stdout


def test_bad_command_is_an_error():
    out = fastdyn_cli("nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr
