"""The Triton backend: the same ops as torch.ops.fastdyn, as torch.ops.fastdyn_triton.*
(opaque custom ops, so torch.compile calls them as they are). On a GPU they run compiled;
on the CPU, under TRITON_INTERPRET=1, the same kernels run in Triton's interpreter (tests).
Arguments are checked by the C++ launchers' own checks (torch.ops.fastdyn.check_*_args,
~0.2 us a param; their Python mirror in fastdyn.ops.checks, which the fake kernels use,
took ~5: 11 ms of an AdamW step on 2,000 params).

No `from __future__ import annotations` here: torch 2.6's custom_op evaluates string
annotations without `Tuple` in scope."""

import contextlib
from typing import List, Optional, Tuple

import torch

import fastdyn._extension  # noqa: F401  (torch.ops.fastdyn.check_*_args)
from fastdyn.ops import fake
from fastdyn.ops.triton import adam as _adam
from fastdyn.ops.triton import clip as _clip
from fastdyn.ops.triton import lamb as _lamb
from fastdyn.ops.triton import lars as _lars
from fastdyn.ops.triton import norm as _norm
from fastdyn.ops.triton import sgd as _sgd
from fastdyn.ops.triton._multi_tensor import TL_DTYPES

_NS = "fastdyn_triton"
_native_checks = torch.ops.fastdyn


def _device_guard(tensors, name: str):
    """Triton launches on the current CUDA device: make it the tensors' own (a model on
    cuda:1 while cuda:0 is current), as the C++ launchers' CUDAGuard does. Refuses first
    what the kernels cannot take (float64: the C++ checks accept it), before any launch
    writes: scale_ of [float32, float64] had scaled the float32 tensor, then refused."""
    for i, t in enumerate(tensors):
        if t.dtype not in TL_DTYPES:
            raise TypeError(f"{name}[{i}] has dtype {t.dtype}: the Triton backend handles "
                            "float32, float16 and bfloat16; use the native backend")
    if tensors and tensors[0].is_cuda:
        return torch.cuda.device(tensors[0].device)
    return contextlib.nullcontext()

# The update ops' trailing grad_scale / found_inf / stats have no defaults here (the C++
# schemas give them None): torch 2.11 drops trailing arguments equal to their default before
# the ADInplaceOrView kernel of a Python custom op bumps the versions of the mutated ones,
# and then fails on the missing mutated `stats` (IndexError, seen on an H100).


@torch.library.custom_op(f"{_NS}::multi_tensor_norm", mutates_args=())
def multi_tensor_norm(tensors: List[torch.Tensor], ord: float = 2.0, per_tensor: bool = False,
                      inv_scale: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    _native_checks.check_norm_args(tensors, ord, inv_scale)
    if not tensors:  # (the reference's answer: a norm of nothing is 0; no device to launch on)
        device = inv_scale.device if inv_scale is not None else None
        return (torch.zeros((), dtype=torch.float32, device=device),
                torch.zeros(0, dtype=torch.float32, device=device))
    with _device_guard(tensors, "tensors"):
        return _norm.multi_tensor_norm(tensors, ord, per_tensor, inv_scale)


@torch.library.custom_op(f"{_NS}::multi_tensor_scale_", mutates_args=("tensors",))
def multi_tensor_scale_(tensors: List[torch.Tensor], scale: torch.Tensor) -> None:
    _native_checks.check_scale_args(tensors, scale)
    if not tensors:
        return
    with _device_guard(tensors, "tensors"):
        _norm.scale_(tensors, scale)


@torch.library.custom_op(f"{_NS}::multi_tensor_unscale_norm_", mutates_args=("tensors", "found_inf"))
def multi_tensor_unscale_norm_(tensors: List[torch.Tensor], inv_scale: torch.Tensor,
                               found_inf: torch.Tensor, ord: float = 2.0,
                               per_tensor: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    _native_checks.check_unscale_norm_args(tensors, inv_scale, found_inf, ord)
    with _device_guard(tensors, "tensors"):
        return _norm.multi_tensor_unscale_norm_(tensors, inv_scale, found_inf, ord, per_tensor)


@torch.library.custom_op(f"{_NS}::clip_grad_norm_", mutates_args=("grads",))
def clip_grad_norm_(grads: List[torch.Tensor], max_norm: float, ord: float = 2.0) -> torch.Tensor:
    _native_checks.check_clip_args(grads, ord)
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    with _device_guard(grads, "grads"):
        return _clip.clip_grad_norm_(grads, max_norm, ord)


@torch.library.custom_op(
    f"{_NS}::adam_",
    mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "master_params",
                  "state_steps", "stats"))
def adam_(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
          exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor],
          master_params: List[torch.Tensor], state_steps: List[torch.Tensor], lr: torch.Tensor,
          beta1: torch.Tensor, beta2: float, weight_decay: torch.Tensor, eps: float,
          amsgrad: bool, maximize: bool, decoupled_weight_decay: bool,
          grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
          stats: Optional[torch.Tensor]) -> None:
    _native_checks.check_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                   master_params, state_steps, lr, beta1, weight_decay, amsgrad,
                                   grad_scale, found_inf, stats)
    with _device_guard(params, "params"):
        _adam.adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
                    lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
                    grad_scale, found_inf, stats)


@torch.library.custom_op(f"{_NS}::sgd_", mutates_args=("params", "momentum_buffers",
                                                       "master_params", "stats"))
def sgd_(params: List[torch.Tensor], grads: List[torch.Tensor],
         momentum_buffers: List[torch.Tensor], master_params: List[torch.Tensor],
         lr: torch.Tensor, momentum: torch.Tensor, dampening: float, weight_decay: torch.Tensor,
         nesterov: bool, maximize: bool, is_first_step: bool, grad_scale: Optional[torch.Tensor],
         found_inf: Optional[torch.Tensor], stats: Optional[torch.Tensor]) -> None:
    _native_checks.check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                       momentum, grad_scale, found_inf, stats, None, weight_decay)
    with _device_guard(params, "params"):
        _sgd.sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                  weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf, stats)


@torch.library.custom_op(f"{_NS}::lamb_", mutates_args=("params", "exp_avgs", "exp_avg_sqs",
                                                        "master_params", "state_steps", "stats"))
def lamb_(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
          exp_avg_sqs: List[torch.Tensor], master_params: List[torch.Tensor],
          state_steps: List[torch.Tensor], lr: torch.Tensor, beta1: torch.Tensor, beta2: float,
          eps: float, weight_decay: torch.Tensor, bias_correction: bool, grad_averaging: bool,
          trust_clip: bool, always_adapt: bool, grad_scale: Optional[torch.Tensor],
          found_inf: Optional[torch.Tensor], stats: Optional[torch.Tensor]) -> None:
    _native_checks.check_lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                   state_steps, lr, beta1, weight_decay, grad_scale, found_inf,
                                   stats)
    with _device_guard(params, "params"):
        _lamb.lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1,
                    beta2, eps, weight_decay, bias_correction, grad_averaging, trust_clip,
                    always_adapt, grad_scale, found_inf, stats)


@torch.library.custom_op(f"{_NS}::lars_", mutates_args=("params", "momentum_buffers",
                                                        "master_params", "stats"))
def lars_(params: List[torch.Tensor], grads: List[torch.Tensor],
          momentum_buffers: List[torch.Tensor], master_params: List[torch.Tensor],
          lr: torch.Tensor, momentum: torch.Tensor, dampening: float, weight_decay: torch.Tensor,
          nesterov: bool, trust_coeff: float, eps: float, trust_clip: bool, always_adapt: bool,
          is_first_step: bool, grad_scale: Optional[torch.Tensor],
          found_inf: Optional[torch.Tensor], stats: Optional[torch.Tensor],
          trust_ratios: Optional[torch.Tensor]) -> None:
    _native_checks.check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                       momentum, grad_scale, found_inf, stats, trust_ratios,
                                       weight_decay)
    with _device_guard(params, "params"):
        _lars.lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                    weight_decay, nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
                    grad_scale, found_inf, stats, trust_ratios)


@torch.library.custom_op(f"{_NS}::lamb_moments_", mutates_args=("exp_avgs", "exp_avg_sqs",
                                                                "state_steps"))
def lamb_moments_(params: List[torch.Tensor], grads: List[torch.Tensor],
                  exp_avgs: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
                  master_params: List[torch.Tensor], state_steps: List[torch.Tensor],
                  beta1: torch.Tensor, beta2: float, eps: float, weight_decay: torch.Tensor,
                  bias_correction: bool, grad_averaging: bool, grad_scale: Optional[torch.Tensor],
                  found_inf: Optional[torch.Tensor]) -> torch.Tensor:
    _native_checks.check_lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                           state_steps, beta1, weight_decay, grad_scale, found_inf)
    with _device_guard(params, "params"):
        return _lamb.lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps,
                                   beta1, beta2, eps, weight_decay, bias_correction, grad_averaging,
                                   grad_scale, found_inf)


@torch.library.custom_op(f"{_NS}::lamb_apply_", mutates_args=("params", "master_params"))
def lamb_apply_(params: List[torch.Tensor], exp_avgs: List[torch.Tensor],
                exp_avg_sqs: List[torch.Tensor], master_params: List[torch.Tensor],
                state_steps: List[torch.Tensor], lr: torch.Tensor, trust_ratios: torch.Tensor,
                beta1: torch.Tensor, beta2: float, eps: float, weight_decay: torch.Tensor,
                bias_correction: bool, found_inf: Optional[torch.Tensor]) -> None:
    _native_checks.check_lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params,
                                         state_steps, lr, trust_ratios, beta1, weight_decay,
                                         found_inf)
    with _device_guard(params, "params"):
        _lamb.lamb_apply_(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                          beta1, beta2, eps, weight_decay, bias_correction, found_inf)


def _arguments(name: str) -> tuple:
    return tuple((a.name, a.default_value)
                 for a in getattr(torch.ops.fastdyn_triton, name).default._schema.arguments)


# the native ops' fakes: the same checks (fastdyn.ops.checks), the same outputs
for _name, _fake in fake.FAKES.items():
    torch.library.register_fake(f"{_NS}::{_name}", _fake)


# (name, default) of every argument of every op, read once at import for
# fastdyn.ops.registry: torch 2.11's dynamo cannot trace a FunctionSchema inside a step.
ARGUMENTS = {name: _arguments(name) for name in (
    "multi_tensor_norm", "multi_tensor_scale_", "multi_tensor_unscale_norm_", "clip_grad_norm_",
    "adam_", "sgd_", "lamb_", "lamb_moments_", "lamb_apply_", "lars_")}
