"""pytest-benchmark setup: each bench_<op>.py times fastdyn and the torch baselines of one
op on the same tensors in the same run (one benchmark group per op and parameter set); the
summary adds the speedups and GB/s against the bandwidth measured in this run.

    .venv/bin/python -m pytest benchmarks                # all (pyproject.toml collects bench_*.py)
    .venv/bin/python -m pytest benchmarks/bench_lamb.py  # one op
    FASTDYN_BENCH_SETS=1000-small .venv/bin/python -m pytest benchmarks   # one parameter set
"""

import os

import pytest
import torch

from fastdyn.bench import bandwidth, cases

DEVICE = torch.device(os.environ.get("FASTDYN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
SETS = os.environ.get("FASTDYN_BENCH_SETS", "gpt2-small,1000-small").split(",")

_cases: dict = {}
_info: dict = {}


def pytest_collection_modifyitems(config, items):
    """Each case's tests one after another: get_case keeps one case at a time, and the files'
    parametrize order (set_name varying fastest) rebuilt the case for every test."""
    here = os.path.dirname(os.path.abspath(__file__))
    mine = [i for i, item in enumerate(items) if str(item.path.parent) == here]
    first_seen: dict = {}

    def case_of(item):
        params = item.callspec.params if hasattr(item, "callspec") else {}
        key = (item.path, item.originalname, params.get("op"), params.get("set_name"))
        return first_seen.setdefault(key, len(first_seen))

    for i, item in zip(mine, sorted((items[i] for i in mine), key=case_of)):
        items[i] = item


def get_case(op: str, set_name: str) -> cases.Case:
    key = (op, set_name)
    if key not in _cases:
        _cases.clear()  # one case's tensors in memory at a time
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        _cases[key] = cases.build(op, set_name, DEVICE)
        c = _cases[key]
        # the numbers the summary needs, not the case: holding each case (params, grads,
        # every optimizer's state) kept them all alive to the end (~18 GB at full size)
        _info[f"{c.op} / {set_name}"] = dict(
            n_elems=c.n_elems, bytes_per_elem=c.bytes_per_elem, kind=c.bandwidth_kind,
            bw=bandwidth.measure(c.n_elems * 4 * c.arrays, DEVICE, rounds=5))
    return _cases[key]


def run(benchmark, op, set_name, impl):
    case = get_case(op, set_name)
    if impl not in case.impls:
        pytest.skip(f"{impl} not available for {op}")
    fn = case.impls[impl]
    benchmark.group = f"{case.op} / {set_name}"
    benchmark.extra_info.update(impl=impl, elements=case.n_elems, bytes_per_elem=case.bytes_per_elem)
    if DEVICE.type == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
    else:
        timed = fn
    if case.reset:  # the clipping case: its grads shrink from here for this test's few dozen calls
        case.reset()
    timed()
    benchmark.pedantic(timed, rounds=7, iterations=3, warmup_rounds=1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict = {}
    for b in session.benchmarks:
        groups.setdefault(b.group, {})[b.extra_info["impl"]] = b.stats.median
    terminalreporter.section("fastdyn: speedups and bandwidth")
    for group, meds in groups.items():
        ours = meds.get("fastdyn")
        info = _info.get(group)
        if ours is None or info is None:
            continue
        bw, kind = info["bw"], info["kind"]
        gbs = info["n_elems"] * info["bytes_per_elem"] / ours / 1e9
        ratios = ", ".join(f"{k} {v / ours:.2f}x" for k, v in meds.items() if k != "fastdyn")
        terminalreporter.write_line(
            f"{group}: fastdyn {ours * 1e3:.2f} ms; vs {ratios}; {gbs:.1f} GB/s = "
            f"{100 * gbs / bw[kind]:.0f}% of the measured {kind} bandwidth ({bw[kind]:.1f} GB/s)")
