"""`fastdyn bench`: fastdyn's ops against torch's on the same tensors in the same run, with
GB/s and the fraction of the machine's bandwidth measured in that run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

import torch

import fastdyn
from fastdyn.bench import bandwidth, cases
from fastdyn.bench.params import scale
from fastdyn.bench.timing import compare

DEFAULT_OPS = ["norm", "unscale", "clip", "clip-clipping", "adamw", "sgd", "lamb", "lamb-amp", "lars"]


def run_case(case: cases.Case, device: torch.device, rounds: int) -> dict:
    times = compare(case.impls, device, rounds=rounds, reset=case.reset)
    elem_size = torch.empty((), dtype=case.dtype).element_size()
    bw = bandwidth.measure(case.n_elems * elem_size * case.arrays, device, rounds=rounds)
    ours = times["fastdyn"]
    gbs = case.n_elems * case.bytes_per_elem / ours / 1e9
    machine = bw[case.bandwidth_kind]
    return {
        "op": case.op, "set": case.param_set, "elements": case.n_elems,
        "dtype": str(case.dtype).replace("torch.", ""),
        "bytes_per_elem": case.bytes_per_elem,
        "ms": {k: v * 1e3 for k, v in times.items()},
        "speedup_vs": {k: v / ours for k, v in times.items() if k != "fastdyn"},
        "baseline": case.baseline,
        "gb_s": gbs, "machine_gb_s": machine, "bandwidth_kind": case.bandwidth_kind,
        "fraction_of_bandwidth": gbs / machine, "machine_bandwidth": bw,
        "fraction_of_copy_bandwidth": gbs / bw["copy"],
    }


def _git_commit():
    """HEAD of the repository fastdyn is imported from (an editable install), else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(fastdyn.__file__),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    env = {"date": datetime.date.today().isoformat(), "fastdyn": fastdyn.__version__,
           "git_commit": _git_commit(), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(),
           # a forced backend is what the "fastdyn" rows ran; a scale below 1 shrank the sets
           "FASTDYN_BACKEND": os.environ.get("FASTDYN_BACKEND"),
           "backend": fastdyn.ops.backend_for(device),
           "FASTDYN_BENCH_SCALE": os.environ.get("FASTDYN_BENCH_SCALE")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                env["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return env


def _label(r: dict) -> str:
    dtype = r.get("dtype", "float32")
    return r["op"] if dtype == "float32" else f"{r['op']} ({dtype})"


def format_table(results: list, fastdyn_name: str = "fastdyn") -> str:
    """Markdown rows of `results`, as `run_cli` writes them or older files do (without
    "dtype" or "fraction_of_copy_bandwidth")."""
    lines = [f"| op | set | {fastdyn_name} ms | baseline ms | speedup | other | GB/s | of measured BW |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        base = r["baseline"]
        others = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_vs"].items() if k != base)
        copy = r.get("fraction_of_copy_bandwidth")
        lines.append(
            f"| {_label(r)} | {r['set']} | {r['ms']['fastdyn']:.2f} | {r['ms'][base]:.2f} ({base}) | "
            f"{r['speedup_vs'][base]:.2f}x | {others} | {r['gb_s']:.1f} | "
            f"{100 * r['fraction_of_bandwidth']:.0f}% of {r['machine_gb_s']:.1f} ({r['bandwidth_kind']})"
            + (f", {100 * copy:.0f}% of copy" if copy is not None and r["bandwidth_kind"] != "read" else "")
            + " |")
    return "\n".join(lines)


def _header(env: dict) -> str:
    where = env.get("gpu") or env.get("cpu")
    line = f"fastdyn bench on {where} ({env['device']}, {env['threads']} threads), torch {env['torch']}"
    if env["FASTDYN_BACKEND"]:
        line += (f"; FASTDYN_BACKEND={env['FASTDYN_BACKEND']}: the fastdyn rows run the "
                 f"{env['backend']} backend")
    if scale() != 1:
        line += f"; sets scaled by FASTDYN_BENCH_SCALE={env['FASTDYN_BENCH_SCALE']}"
    return line


def run_cli(quick=False, only=None, device=None, json_path=None, sets=("gpt2-small", "1000-small"),
            dtype: str = "float32", compile: bool = True) -> int:
    """`fastdyn bench`, with the names the command line checked (`only`: op names or None).
    compile=False leaves out the torch.compile baselines (minutes of compiling a case)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = list(only) if only else DEFAULT_OPS
    rounds = 3 if quick else 7
    torch_dtype = getattr(torch, dtype)
    env = environment(device)
    options = {"quick": quick, "rounds": rounds, "sets": list(sets),
               "only": list(only) if only else None, "dtype": dtype, "device": str(device),
               "compile": compile}
    fastdyn_name = f"fastdyn ({env['backend']})" if env["FASTDYN_BACKEND"] else "fastdyn"
    print(_header(env), flush=True)
    results = []
    for op in ops:
        for set_name in sets:
            case = cases.build(op, set_name, device, dtype=torch_dtype, with_compile=compile)
            r = run_case(case, device, rounds)
            results.append(r)
            print(format_table([r]).splitlines()[-1], flush=True)
            if json_path:  # after every case: a run cut short keeps what it measured
                _write_json(json_path, {"environment": env, "options": options, "results": results})
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(format_table(results, fastdyn_name))
    return 0


def _write_json(path: str, data: dict) -> None:
    """Through a temporary file and a rename: a run killed mid-write keeps the last whole file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
