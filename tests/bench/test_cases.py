"""The benchmarks compare like with like: every implementation a case times (torch's
optimizers, the timm-style foreach LAMB/LARS, torch.compile's reference steps) computes the
same step as fastdyn's, on the same parameter sets shrunk to a few thousand elements.

float64, so that a step (lr 1e-3: ~1e-8 per element for LARS) stands far above the rounding
of the parameters: a wrong weight decay or bias correction in a baseline moves the result by
~1e-3 of the step, the tolerance below is 1e-7 of it."""

import pytest
import torch

import fastdyn
from fastdyn.bench import baselines, cases
from helpers import INTERPRETED
from fastdyn.ops import registry
from fastdyn.ops.backend import triton_available

DEVICE = torch.device("cpu")
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
        return cases.build(op, set_name, DEVICE, with_compile=False, with_triton=False,
                           dtype=torch.float64)

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


def _zeros(params):
    return [torch.zeros_like(p) for p in params]


# The functions torch.compile fuses in the LAMB and LARS benchmarks, run eagerly: each must
# give fastdyn's first step. (reference step on (params, grads), fastdyn optimizer)
COMPILED_REFERENCES = {
    "lamb": (lambda ps, gs: baselines.lamb_reference_step(ps, gs, _zeros(ps), _zeros(ps), step=1,
                                                          lr=1e-3, max_norm=1.0),
             lambda ps: fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0)),
    "lamb-inv_scale": (lambda ps, gs: baselines.lamb_reference_step(
                           ps, gs, _zeros(ps), _zeros(ps), step=1, lr=1e-3, max_norm=1.0,
                           inv_scale=torch.ones((), dtype=torch.float64)),
                       lambda ps: fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0)),
    "lars": (lambda ps, gs: baselines.lars_reference_step(ps, gs, _zeros(ps), lr=1e-3),
             lambda ps: fastdyn.optim.LARS(ps, lr=1e-3, weight_decay=1e-4)),
}


@pytest.mark.parametrize("name", list(COMPILED_REFERENCES))
def test_compiled_reference_is_fastdyns_step(name):
    reference_step, make_optimizer = COMPILED_REFERENCES[name]
    params = cases.make_params(cases.PARAM_SETS["gpt2-small"](), DEVICE, dtype=torch.float64)
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
