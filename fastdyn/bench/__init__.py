"""`fastdyn bench`: fastdyn's ops against torch's on the same tensors in the same run, with
GB/s and the fraction of the machine's bandwidth measured in that run."""

from __future__ import annotations

import datetime
import json
import platform

import torch

from fastdyn.bench import bandwidth, cases
from fastdyn.bench.timing import compare

DEFAULT_OPS = ["norm", "unscale", "clip", "clip-clipping", "adamw", "sgd", "lamb", "lamb-amp", "lars"]


def run_case(case: cases.Case, device: torch.device, rounds: int) -> dict:
    times = compare(case.impls, device, rounds=rounds)
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


def environment(device: torch.device) -> dict:
    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads()}
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


def format_table(results: list) -> str:
    lines = ["| op | set | fastdyn ms | baseline ms | speedup | other | GB/s | of measured BW |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        base = r["baseline"]
        others = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_vs"].items() if k != base)
        lines.append(
            f"| {_label(r)} | {r['set']} | {r['ms']['fastdyn']:.2f} | {r['ms'][base]:.2f} ({base}) | "
            f"{r['speedup_vs'][base]:.2f}x | {others} | {r['gb_s']:.1f} | "
            f"{100 * r['fraction_of_bandwidth']:.0f}% of {r['machine_gb_s']:.1f} ({r['bandwidth_kind']})"
            + (f", {100 * r['fraction_of_copy_bandwidth']:.0f}% of copy" if r["bandwidth_kind"] != "read" else "")
            + " |")
    return "\n".join(lines)


def run_cli(quick=False, only=None, device=None, json_path=None, sets=("gpt2-small", "1000-small"),
            dtype: str = "float32") -> int:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = only.split(",") if only else DEFAULT_OPS
    rounds = 3 if quick else 7
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    torch_dtype = getattr(torch, dtype)
    env = environment(device)
    print(f"fastdyn bench on {env.get('gpu') or env.get('cpu')} ({device}, {env['threads']} threads), "
          f"torch {env['torch']}", flush=True)
    results = []
    for op in ops:
        for set_name in sets:
            case = cases.build(op, set_name, device, dtype=torch_dtype)
            r = run_case(case, device, rounds)
            results.append(r)
            print(format_table([r]).splitlines()[-1], flush=True)
            if json_path:  # after every case: a run cut short keeps what it measured
                _write_json(json_path, env, results)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(format_table(results))
    return 0


def _write_json(path: str, env: dict, results: list) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "results": results}, f, indent=2)
