"""The benchmark cases: for each op, fastdyn's implementation and torch's (or a plain
PyTorch one) on the same tensors, with the bytes per element fastdyn's design moves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

import fastdyn
from fastdyn.bench import baselines
from fastdyn.bench.params import PARAM_SETS, make_params, numel
from fastdyn.ops.backend import triton_available, use_backend


@dataclass
class Case:
    op: str
    param_set: str
    n_elems: int
    bytes_per_elem: float  # memory traffic of fastdyn's design, per element (fp32 until build() scales it)
    bandwidth_kind: str    # "read" (norms) or "update" (in-place updates: read and write)
    arrays: int = 1        # distinct arrays of n_elems touched: the working set is 4*arrays*n_elems bytes
    impls: Dict[str, Callable] = field(default_factory=dict)  # "fastdyn" first
    baseline: str = ""     # the implementation the ratio is taken against
    note: str = ""
    params: list = field(default_factory=list)  # the tensors the implementations share
    dtype: torch.dtype = torch.float32           # of the params, grads and state
    reset: Optional[Callable] = None  # restores what the calls change, untimed, before each timed sample


TRITON = "fastdyn triton"


def _on_triton(fn):
    def run():
        with use_backend("triton"):
            return fn()
    return run


def _norm(params, device, set_name, with_compile):
    grads = [p.grad for p in params]
    return Case("norm", set_name, numel(params), 4, "read", 1, {
        "fastdyn": lambda: fastdyn.multi_tensor_l2norm(grads),
        TRITON: _on_triton(lambda: fastdyn.multi_tensor_l2norm(grads)),
        "torch foreach": lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))),
    }, baseline="torch foreach")


def _unscale(params, device, set_name, with_compile):
    """GradScaler's unscale + inf check and a clip's norm: torch needs two passes over the
    gradients, fastdyn's op one. The inverse scale is 1 so that repeated calls leave the
    gradients as they are (neither implementation skips the multiply at 1)."""
    grads = [p.grad for p in params]
    inv_scale = torch.ones((), device=device)
    found_inf = torch.zeros((), device=device)

    def ours():
        return fastdyn.ops.multi_tensor_unscale_norm_(grads, inv_scale, found_inf)[0]

    def torch_two_pass():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    # 8 B/elem: one read and one write
    return Case("unscale + norm", set_name, numel(params), 8, "update", 1, {
        "fastdyn": ours, TRITON: _on_triton(ours), "torch foreach": torch_two_pass,
    }, baseline="torch foreach")


class ShrinkingMaxNorm:
    """max_norm for the clipping case, under the grads' norm at every call: each call, whichever
    implementation makes it, scales the shared grads to the max_norm it was given, and the
    next is `factor` under the norm that leaves. A fixed max_norm would clip once, then see a
    coefficient that rounds to 1, which skips the scaling pass (measured: 'clipping' timed
    like not). reset() restores the grads (untimed, before each timed sample), so at most
    one sample's calls, 1,000, shrink them."""

    NORM = 1e4  # of the grads after reset: float16 holds it, as torch's float16 norms must
    # Under 1 by more than the rounding of the grads and of torch's norm and coefficient in
    # the grads' dtype (bfloat16: 8 bits; at 0.999 the grads kept their values and half the
    # calls did not clip); near enough to 1 that 1,000 calls leave float16 elements normal.
    FACTOR, BFLOAT16_FACTOR = 0.99, 0.985
    # The first call after a reset halves the norm: torch's float16 and bfloat16 norms on the
    # CPU read low on large tensors (fp16: 2% at 39M elements, 7.5% at 103M), and by about as
    # much at every later call, so from the second call on its coefficient is `factor` too.
    FIRST_FACTOR = 0.5

    def __init__(self, grads: list):
        self.grads = grads
        scale = self.NORM / float(fastdyn.multi_tensor_l2norm(grads)[0])
        for g in grads:  # in float32: float16 holds the products, not always the scale
            g.copy_(g.float() * scale)
        self.saved = [g.clone() for g in grads]
        self.norm0 = float(fastdyn.multi_tensor_l2norm(grads)[0])
        self.factor = self.BFLOAT16_FACTOR if grads[0].dtype == torch.bfloat16 else self.FACTOR
        self.reset()

    def reset(self) -> None:
        torch._foreach_copy_(self.grads, self.saved)
        self.norm, self.next_factor = self.norm0, self.FIRST_FACTOR

    def __call__(self) -> float:
        max_norm = self.next_factor * self.norm
        self.next_factor = self.factor
        self.norm *= max_norm / (self.norm + 1e-6)  # clip_grad_norm_'s coefficient
        return max_norm


def _clip(params, device, set_name, with_compile, clipping: bool):
    grads = [p.grad for p in params]
    if clipping:
        max_norm = ShrinkingMaxNorm(grads)
    else:  # far above the norm: coefficient 1
        total = float(fastdyn.multi_tensor_l2norm(grads)[0])
        max_norm = lambda: 1e6 * total  # noqa: E731
    impls = {"fastdyn": lambda: fastdyn.clip_grad_norm_(params, max_norm()),
             TRITON: _on_triton(lambda: fastdyn.clip_grad_norm_(params, max_norm())),
             "torch foreach": lambda: torch.nn.utils.clip_grad_norm_(params, max_norm(), foreach=True)}
    # 4 B/elem: one read; clipping adds a read and a write (in place)
    return Case("clip" + (" (clipping)" if clipping else " (under max_norm)"), set_name,
                numel(params), 12 if clipping else 4, "update" if clipping else "read", 1, impls,
                baseline="torch foreach", reset=max_norm.reset if clipping else None)


def _own_params(params):
    """16-bit params: a copy for each implementation, sharing the (read-only) gradients.
    torch's foreach and for-loop fp16 AdamW turn these params to inf in two steps (eps=1e-8
    is 0 in fp16 and v underflows), and shared params then ran every implementation timed
    after them on inf. fp32 params stay finite in every implementation and are shared (a
    copy each of the 1B set would not fit beside the optimizer states)."""
    if params[0].dtype not in (torch.float16, torch.bfloat16):
        return params
    copies = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad
        copies.append(q)
    return copies


def _optimizer_case(op, params, make_ours, torch_variants, bytes_per_elem, set_name, baseline, arrays):
    impls = {"fastdyn": make_ours(_own_params(params)).step,
             TRITON: _on_triton(make_ours(_own_params(params)).step)}
    for name, make in torch_variants.items():
        opt = make(_own_params(params))
        impls[name] = opt.step
    return Case(op, set_name, numel(params), bytes_per_elem, "update", arrays, impls, baseline=baseline)


def _adamw(params, device, set_name, with_compile):
    variants = {
        "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
        "torch for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False),
    }
    return _optimizer_case("adamw", params, lambda ps: fastdyn.optim.AdamW(ps, lr=1e-3), variants,
                           28, set_name, "torch fused", arrays=4)


def _sgd(params, device, set_name, with_compile):
    variants = {
        "torch fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "torch foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
        "torch for-loop": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=False),
    }
    return _optimizer_case("sgd", params, lambda ps: fastdyn.optim.SGD(ps, lr=1e-3, momentum=0.9),
                           variants, 20, set_name, "torch fused", arrays=3)


# torch.compile of a step over N tensors builds an N-way graph; past this many tensors its
# compile time (minutes) is out of proportion for a benchmark run, so that baseline is left out.
COMPILE_MAX_TENSORS = 300


# The compiled reference steps' fixed arguments: fastdyn's first step, which
# tests/bench/test_cases.py checks they compute (the work of a step does not depend on them).
LAMB_REFERENCE = dict(step=1, lr=1e-3, max_norm=1.0)
LARS_REFERENCE = dict(lr=1e-3)


class _Compiled:
    """A torch.compile'd single-tensor reference step, with its own state. Its keyword
    arguments (LAMB's `step` among them) are fixed, so one graph serves every call."""

    def __init__(self, fn, params, n_state, **kw):
        self.params = params
        self.state = [[torch.zeros_like(p) for p in params] for _ in range(n_state)]
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False)
        self.kw = kw

    @torch.no_grad()
    def step(self):
        self.fn(self.params, [p.grad for p in self.params], *self.state, **self.kw)


def with_loss_scale(opt):
    """What fastdyn.amp.LossScaler hands the step: the scale (1, so values stay put),
    found_inf, and the inf check to fold into the step's own gradient pass (without
    `_check_inf` the step had no inf check at all, where the baseline's pass has one)."""
    device = opt.param_groups[0]["params"][0].device
    opt.grad_scale = torch.ones((), device=device)
    opt.found_inf = torch.zeros((), device=device)
    opt._check_inf = True
    return opt


def _lamb(params, device, set_name, with_compile, loss_scale=False):
    with_compile = with_compile and len(params) <= COMPILE_MAX_TENSORS
    variants = {"timm-style foreach": lambda ps: baselines.ForeachLamb(
        ps, lr=1e-3, max_grad_norm=1.0, loss_scale=loss_scale)}
    if with_compile:
        inv = {"inv_scale": torch.ones((), device=device)} if loss_scale else {}
        variants["torch.compile reference"] = lambda ps: _Compiled(
            baselines.lamb_reference_step, ps, 2, **LAMB_REFERENCE, **inv)

    def ours(ps):
        opt = fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0)
        return with_loss_scale(opt) if loss_scale else opt

    name = "lamb (max_grad_norm" + (", loss scale)" if loss_scale else ")")
    return _optimizer_case(name, params, ours, variants, 44, set_name, "timm-style foreach", arrays=4)


def _lars(params, device, set_name, with_compile):
    with_compile = with_compile and len(params) <= COMPILE_MAX_TENSORS
    variants = {"timm-style foreach": lambda ps: baselines.ForeachLars(ps, lr=1e-3, weight_decay=1e-4)}
    if with_compile:
        variants["torch.compile reference"] = lambda ps: _Compiled(
            baselines.lars_reference_step, ps, 1, **LARS_REFERENCE)
    return _optimizer_case("lars", params,
                           lambda ps: fastdyn.optim.LARS(ps, lr=1e-3, weight_decay=1e-4), variants,
                           28, set_name, "timm-style foreach", arrays=3)


BUILDERS = {
    "norm": _norm,
    "unscale": _unscale,
    "clip": lambda *a: _clip(*a, clipping=False),
    "clip-clipping": lambda *a: _clip(*a, clipping=True),
    "adamw": _adamw,
    "sgd": _sgd,
    "lamb": _lamb,
    "lamb-amp": lambda *a: _lamb(*a, loss_scale=True),
    "lars": _lars,
}


def build(op: str, set_name: str, device: torch.device, with_compile: bool = True,
          with_triton: bool | None = None, dtype: torch.dtype = torch.float32) -> Case:
    """The case `op` on parameter set `set_name`. The Triton backend is timed beside the
    native one on GPUs (by default); torch.compile baselines only when `with_compile`."""
    device = torch.device(device)
    params = make_params(PARAM_SETS[set_name](), device, dtype=dtype)
    case = BUILDERS[op](params, device, set_name, with_compile)
    case.params = params
    case.dtype = dtype
    # params, grads and optimizer state all take the params' dtype: bytes scale with it
    case.bytes_per_elem *= params[0].element_size() / 4
    if with_triton is None:
        with_triton = device.type == "cuda" and triton_available()
    if not with_triton:
        del case.impls[TRITON]
    return case
