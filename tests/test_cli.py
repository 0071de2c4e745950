"""The `fastdyn` command line, run as users run it (`python -m fastdyn ...`, a new process)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastdyn
from fastdyn.bench import cases
from fastdyn.cli import main
from fastdyn.demo import run as run_demo, warmup_cosine
from fastdyn.ops.backend import triton_available


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
    # what was run: the code, the options, the environment variables that change the work
    assert d["environment"]["fastdyn"] == fastdyn.__version__ and "git_commit" in d["environment"]
    assert d["environment"]["FASTDYN_BENCH_SCALE"] == "0.01"
    assert d["options"] == {"quick": True, "rounds": 3, "sets": ["1000-small"],
                            "only": ["norm", "lars"], "dtype": "float32", "device": "cpu",
                            "compile": True}
    assert [r["op"] for r in d["results"]] == ["norm", "lars"]
    for r in d["results"]:
        assert r["baseline"] in r["speedup_vs"] and r["speedup_vs"][r["baseline"]] > 0
        assert r["gb_s"] > 0 and r["fraction_of_bandwidth"] > 0
        assert f"| {r['op']} | 1000-small |" in out.stdout


def test_bench_without_the_compiled_baselines(tmp_path):
    """--no-compile: compiling the reference LAMB of a 244-tensor set took minutes, which a
    lent GPU's ten-minute call cannot spare before the other targets are measured."""
    path = tmp_path / "results.json"
    out = fastdyn_cli("bench", "--quick", "--no-compile", "--only", "lars", "--sets", "gpt2-small",
                      "--device", "cpu", "--json", str(path), env={"FASTDYN_BENCH_SCALE": "0.002"})
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(path.read_text())
    assert d["options"]["compile"] is False
    (r,) = d["results"]
    assert set(r["speedup_vs"]) == {"timm-style foreach"}


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


@pytest.fixture
def tiny_sets(monkeypatch):
    monkeypatch.setenv("FASTDYN_BENCH_SCALE", "0.002")
    monkeypatch.delenv("FASTDYN_BACKEND", raising=False)


def _usage_error(capsys, *argv) -> str:
    """main(argv) stops with argparse's exit status 2 and one error line, no traceback."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("steps", ["0", "-3", "x"])
def test_demo_steps_must_be_a_positive_integer(capsys, steps):
    """--steps 0 ran no step and then read last_stats() of none: AttributeError on None."""
    assert "--steps" in _usage_error(capsys, "demo", "--steps", steps, "--device", "cpu")


def test_demo_prints_the_lr_each_step_used(capsys):
    """The lr column was read after sched.step(): step 0 showed step 1's lr."""
    run_demo(steps=3, device="cpu")
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 2]
    for r in rows:
        assert float(r[3]) == pytest.approx(1e-2 * warmup_cosine(int(r[0]), 3, 0), rel=1e-2)


def test_demo_takes_a_step_without_statistics(capsys, monkeypatch):
    """last_stats() is None after a step without gradients: the demo prints dashes there."""
    monkeypatch.setattr(fastdyn.optim.LAMB, "last_stats", lambda self: None)
    run_demo(steps=1, device="cpu")
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    0 ")]
    assert row.split()[4:6] == ["-", "-"]


BAD_BENCH_ARGS = {
    "unknown op": (["--only", "norm,bogus"], "bogus"),
    "unknown set": (["--sets", "1000-small,gpt3"], "gpt3"),
    "no op": (["--only", " , "], "no op given"),
    "dtype": (["--dtype", "float64"], "float64"),
    "unknown device": (["--device", "nonsense"], "nonsense"),
    "device fastdyn does not run on": (["--device", "meta"], "meta"),
    "json in a missing directory": (["--json", "/nonexistent-dir/r.json"], "/nonexistent-dir"),
}


@pytest.mark.parametrize("args, named", list(BAD_BENCH_ARGS.values()), ids=list(BAD_BENCH_ARGS))
def test_bench_refuses_bad_arguments_before_any_case(capsys, monkeypatch, tiny_sets, args, named):
    """A bad name used to be a KeyError when the loop reached it, after the cases before it
    had run (minutes), and an unwritable --json path failed after the first case."""
    monkeypatch.setattr(cases, "build", lambda *a, **k: pytest.fail("a case was built"))
    err = _usage_error(capsys, "bench", "--quick", "--device", "cpu", "--sets", "1000-small", *args)
    assert named in err
    if "--only" in args or "--sets" in args:
        assert "choose from" in err and ("lamb-amp" in err or "gpt2-small" in err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("command", ["bench", "demo"])
def test_cuda_without_a_gpu_is_a_usage_error(capsys, command):
    assert "no such GPU" in _usage_error(capsys, command, "--device", "cuda")


def test_bench_names_may_have_spaces_and_empty_entries(capsys, tiny_sets):
    assert main(["bench", "--quick", "--only", " norm,", "--sets", "1000-small, ", "--device", "cpu"]) == 0
    assert "| norm | 1000-small |" in capsys.readouterr().out


def test_bench_says_which_backend_a_forced_run_timed(capsys, monkeypatch, tiny_sets, tmp_path):
    """With FASTDYN_BACKEND set, the "fastdyn" rows are that backend: the header, the table
    and the results file say so."""
    monkeypatch.setenv("FASTDYN_BACKEND", "reference")
    path = tmp_path / "r.json"
    assert main(["bench", "--quick", "--only", "norm", "--sets", "1000-small", "--device", "cpu",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "FASTDYN_BACKEND=reference" in out.splitlines()[0]
    assert "| op | set | fastdyn (reference) ms |" in out
    env = json.loads(path.read_text())["environment"]
    assert env["FASTDYN_BACKEND"] == "reference" and env["backend"] == "reference"


def test_a_bad_fastdyn_backend_is_an_error_line(capsys, monkeypatch):
    """FASTDYN_BACKEND=bogus made `info` a traceback (ValueError from the backend choice)."""
    monkeypatch.setenv("FASTDYN_BACKEND", "bogus")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "FASTDYN_BACKEND" in err and "'bogus'" in err and "triton, reference" in err
    assert "Traceback" not in err


def test_info_says_triton_cannot_run_on_the_cpu_uninterpreted(capsys, monkeypatch):
    """FASTDYN_BACKEND=triton without TRITON_INTERPRET=1: info claimed "cpu -> triton"."""
    monkeypatch.setenv("FASTDYN_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu -> triton" in out
    why = "without TRITON_INTERPRET=1" if triton_available() else "not installed"
    assert any(line.startswith("  cpu: ") and why in line for line in out.splitlines())
