"""The benchmarks compare like with like: every implementation a case times (torch's
optimizers, the timm-style foreach LAMB/LARS, torch.compile's reference steps) computes the
same step as fastdyn's, on the same parameter sets shrunk to a few thousand elements.

float64, so that a step (lr 1e-3: ~1e-8 per element for LARS) stands far above the rounding
of the parameters: a wrong weight decay or bias correction in a baseline moves the result by
~1e-3 of the step, the tolerance below is 1e-7 of it."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdyn
from fastdyn.bench import baselines, cases, format_table
from fastdyn.bench.timing import compare
from helpers import INTERPRETED
from fastdyn.ops import registry
from fastdyn.ops.backend import triton_available

DEVICE = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]
SETS = ["gpt2-small", "1000-small"]
STEP_RTOL = 1e-7  # of the largest change fastdyn's optimizer step makes
# fastdyn's norms are float32 whatever the input (the contract), so a norm, and gradients
# clipped by a coefficient computed from it, agree with torch's float64 ones to float32 rounding
NORM_RTOL = 1e-6


@pytest.fixture(autouse=True)
def small_sets(monkeypatch):
    monkeypatch.setenv("FASTDYN_BENCH_SCALE", "0.002")


def _outcome(op: str, case: cases.Case, impl: str):
    """Run `impl` once on the case's fresh tensors: (norm it returned or None, tensors it changed)."""
    out = case.impls[impl]()
    if op == "norm":
        return (out[0] if isinstance(out, tuple) else out), []
    if op.startswith("clip") or op == "unscale":
        return out, [p.grad.clone() for p in case.params]
    return None, [p.detach().clone() for p in case.params]


def _max_diff(xs, ys):
    return max((x - y).abs().max() for x, y in zip(xs, ys))


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("op", sorted(cases.BUILDERS))
def test_every_implementation_computes_fastdyns_step(op, set_name):
    def fresh():  # same seed: the same tensors for every implementation
        case = cases.build(op, set_name, DEVICE, with_compile=False, with_triton=False,
                           dtype=torch.float64)
        if op.startswith("lamb"):  # past max_grad_norm: the baselines must clip as fastdyn
            _scale_grads_past_the_clipping_norm(case.params, True)
        return case

    case = fresh()
    on_grads = op.startswith("clip") or op == "unscale"
    before = [(p.grad if on_grads else p).detach().clone() for p in case.params]
    norm, tensors = _outcome(op, case, "fastdyn")
    if on_grads:
        tol = NORM_RTOL * max(t.abs().max() for t in before)
        assert (_max_diff(tensors, before) > 0) == (op == "clip-clipping")
    else:
        step = _max_diff(tensors, before) if tensors else 0
        assert bool(tensors) == (step > 0), "the step changed nothing: the comparison would mean nothing"
        tol = STEP_RTOL * step
    others = [name for name in case.impls if name != "fastdyn"]
    assert case.baseline in others
    for name in others:
        got_norm, got = _outcome(op, fresh(), name)
        if norm is not None:
            assert float(got_norm) == pytest.approx(float(norm), rel=NORM_RTOL), name
        if tensors:
            err = _max_diff(got, tensors)
            assert err <= tol, f"{name} differs from fastdyn by {err:.2e} (tolerance {tol:.2e})"


@pytest.mark.triton
@pytest.mark.skipif(not (triton_available() and INTERPRETED), reason="needs Triton's interpreter")
@pytest.mark.parametrize("op", ["norm", "clip-clipping", "sgd"])
def test_triton_implementation_runs_the_triton_backend(op, monkeypatch):
    """The benchmarks' "fastdyn triton" column (timed on GPUs) in fp32, here interpreted: it
    runs the Triton kernels and computes what the native ones compute, to float32 rounding."""
    def fresh():
        return cases.build(op, "gpt2-small", DEVICE, with_compile=False, with_triton=True)

    case = fresh()
    before = [(p.grad if op.startswith("clip") else p).detach().clone() for p in case.params]
    norm, expected = _outcome(op, case, "fastdyn")
    case = fresh()
    backends_used = []
    implementation = registry.implementation
    monkeypatch.setattr(registry, "implementation",
                        lambda name, backend: backends_used.append(backend) or implementation(name, backend))
    norm_t, got = _outcome(op, case, cases.TRITON)
    assert backends_used and set(backends_used) == {"triton"}
    if norm is not None:
        assert float(norm_t) == pytest.approx(float(norm), rel=1e-5)
    if expected:
        step = _max_diff(expected, before)
        assert step > 0 and _max_diff(got, expected) <= 1e-2 * step


def _scale_grads_past_the_clipping_norm(params, clipped: bool):
    """The small sets' gradients have norms under LAMB's max_grad_norm of 1 (0.5 and 0.09):
    times 100 a baseline that forgot to clip differs."""
    if clipped:
        for p in params:
            p.grad.mul_(100)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert (total > 1.0) == clipped


def _zeros(params):
    return [torch.zeros_like(p) for p in params]


# The functions torch.compile fuses in the LAMB and LARS benchmarks, run eagerly: each must
# give fastdyn's first step. (reference step on (params, grads), fastdyn optimizer)
COMPILED_REFERENCES = {
    "lamb": (lambda ps, gs: baselines.lamb_reference_step(ps, gs, _zeros(ps), _zeros(ps),
                                                          **cases.LAMB_REFERENCE),
             lambda ps: fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0)),
    "lamb-inv_scale": (lambda ps, gs: baselines.lamb_reference_step(
                           ps, gs, _zeros(ps), _zeros(ps), **cases.LAMB_REFERENCE,
                           inv_scale=torch.ones((), dtype=torch.float64)),
                       lambda ps: fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0)),
    "lars": (lambda ps, gs: baselines.lars_reference_step(ps, gs, _zeros(ps), **cases.LARS_REFERENCE),
             lambda ps: fastdyn.optim.LARS(ps, lr=1e-3, weight_decay=1e-4)),
}


@pytest.mark.parametrize("grads_norm", ["under max_grad_norm", "clipped"])
@pytest.mark.parametrize("name", list(COMPILED_REFERENCES))
def test_compiled_reference_is_fastdyns_step(name, grads_norm):
    """With the arguments the benchmark compiles it with (the LAMB case had run step 10's
    bias corrections; this test, step 1's), below and above LAMB's max_grad_norm."""
    reference_step, make_optimizer = COMPILED_REFERENCES[name]
    params = cases.make_params(cases.PARAM_SETS["gpt2-small"](), DEVICE, dtype=torch.float64)
    _scale_grads_past_the_clipping_norm(params, grads_norm == "clipped")
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        reference_step(params, [p.grad for p in params])
    got = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    make_optimizer(params).step()
    step = _max_diff(params, before)
    assert step > 0 and _max_diff(got, params) <= STEP_RTOL * step


def test_16_bit_implementations_do_not_share_params():
    """torch's foreach fp16 AdamW turns these params to inf in two steps (eps = 1e-8 is 0 in
    fp16): with shared params every implementation timed after it ran on inf."""
    case = cases.build("adamw", "1000-small", DEVICE, with_compile=False, with_triton=False,
                       dtype=torch.float16)
    for _ in range(2):
        for impl in case.impls.values():
            impl()
    owners = {name: fn.__self__.param_groups[0]["params"] for name, fn in case.impls.items()
              if hasattr(fn, "__self__")}
    assert len({id(ps[0]) for ps in owners.values()}) == len(owners) >= 3
    assert all(torch.isfinite(p).all() for p in owners["fastdyn"])
    assert all(p.grad is q.grad for p, q in zip(owners["fastdyn"], owners["torch fused"]))


def _changed(before, after) -> bool:
    return any(not torch.equal(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_clipping_case_clips_at_every_call(dtype, set_name):
    """Every call of every implementation scales the grads (a coefficient under 1, as torch
    computes it in the grads' dtype too): with a max_norm shrinking by 0.999 a call, bfloat16
    grads rounded back to their values and 40-60% of the calls did not clip (fastdyn then
    skips its scaling pass, torch multiplies by 1). 50 calls from a reset, as a timed sample."""
    case = cases.build("clip-clipping", set_name, DEVICE, with_compile=False, with_triton=False,
                       dtype=dtype)
    grads = [p.grad for p in case.params]
    for name, fn in case.impls.items():
        case.reset()
        for call in range(50):
            before = [g.clone() for g in grads]
            fn()
            assert _changed(before, grads), f"{name}: call {call} after a reset did not clip"


def test_compare_resets_before_every_sample():
    """What keeps the clipping case clipping: no timed sample runs on what an earlier one left."""
    events = []
    fns = {name: (lambda name=name: events.append(name)) for name in ("a", "b")}
    compare(fns, DEVICE, rounds=3, min_time=1e-4, reset=lambda: events.append("reset"))
    runs = "".join(events).split("reset")[1:]
    assert len(runs) == 2 + 2 * 3  # each warm-up, then each sample
    assert all(r and set(r) in ({"a"}, {"b"}) for r in runs)


def _load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_profiles_the_benchmarks_work():
    """benchmarks/profile_step.py: its clip clips at the profiled (4th) call too (a fixed
    max_norm of 1e-3 left a coefficient of 1 there), and its LAMB folds the inf check in, as
    the "lamb-amp" case's does."""
    profile_step = _load_script(REPO / "benchmarks" / "profile_step.py")
    params = cases.make_params(cases.PARAM_SETS["gpt2-small"](), DEVICE)
    clip = profile_step.make_step("clip", params)
    for call in range(4):
        before = [p.grad.clone() for p in params]
        clip()
        assert _changed(before, [p.grad for p in params]), f"call {call} did not clip"
    lamb = profile_step.make_step("lamb", params).__self__
    case = cases.with_loss_scale(fastdyn.optim.LAMB(params, lr=1e-3, max_grad_norm=1.0))
    for attr in ("grad_scale", "found_inf", "_check_inf"):
        assert torch.equal(torch.as_tensor(getattr(lamb, attr)), torch.as_tensor(getattr(case, attr)))


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.json")),
                         ids=lambda p: p.name)
def test_table_renders_every_committed_results_file(path):
    """Older files lack newer keys (the H100 one "fraction_of_copy_bandwidth": KeyError).
    Files of other formats (bench_fsdp.py's results by name) are not this table's."""
    results = json.loads(path.read_text())["results"]
    if not isinstance(results, list):
        pytest.skip("not `fastdyn bench` results")
    lines = format_table(results).splitlines()
    assert len(lines) == 2 + len(results)
    assert all(f"| {r['set']} |" in line for r, line in zip(results, lines[2:]))


def test_benchmark_files_build_each_case_once():
    """benchmarks/conftest.py keeps one case in memory: its tests run case by case (the files'
    parametrize order varied set_name fastest, and every test built its case anew)."""
    script = (
        "import sys, pytest\n"
        "from fastdyn.bench import cases\n"
        "built, build = [], cases.build\n"
        "cases.build = lambda op, set_name, *a, **k: built.append((op, set_name)) or build(op, set_name, *a, **k)\n"
        "rc = pytest.main(['benchmarks/bench_norm.py', '--benchmark-disable', '-q', '-p', 'no:cacheprovider'])\n"
        "print('BUILT', built)\n"
        "sys.exit(rc)\n")
    env = {**os.environ, "FASTDYN_BENCH_SCALE": "0.002", "FASTDYN_BENCH_DEVICE": "cpu",
           "FASTDYN_BENCH_SETS": "gpt2-small,1000-small"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built = ast.literal_eval(out.stdout.split("BUILT ")[-1].strip())
    assert built == [("norm", "gpt2-small"), ("norm", "1000-small")]


def test_pytest_benchmarks_collects_every_benchmark_file():
    """`pytest benchmarks`, as benchmarks/conftest.py documents it, collected nothing: pytest
    looks for test_*.py unless told (pyproject.toml's python_files)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "FASTDYN_BENCH_DEVICE": "cpu"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert collected == {f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("bench_*.py")
                         if p.name != "bench_fsdp.py"}


def test_benchmark_summary_does_not_keep_the_cases_alive():
    """The summary's per-case numbers held the whole case (params, grads, every optimizer's
    state) to the end of the session: one case in memory at a time is the point of get_case."""
    spec = importlib.util.spec_from_file_location("bench_conftest", REPO / "benchmarks" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    conftest.DEVICE = DEVICE
    import gc
    import weakref
    case = conftest.get_case("sgd", "1000-small")
    first, group = weakref.ref(case), f"{case.op} / 1000-small"
    del case
    conftest.get_case("sgd", "gpt2-small")
    gc.collect()
    assert first() is None
    assert set(conftest._info[group]) >= {"n_elems", "bytes_per_elem", "bw"}
