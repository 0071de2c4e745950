"""Fake (meta) kernels of the ops, so torch.compile and FakeTensor can trace them without
running them: they check the arguments as the kernels do (fastdyn.ops.checks), then give
the outputs' shapes; the in-place ops return nothing. The Triton backend's ops
(torch.ops.fastdyn_triton.*) take the same arguments and register the same fakes (FAKES):
a bad argument then fails at trace time on either backend, not at run time."""

import torch

import fastdyn._extension  # noqa: F401
from fastdyn.ops import checks


def _norm_outputs(tensors, per_tensor, device=None):
    device = tensors[0].device if len(tensors) else (device or torch.device("cpu"))
    total = torch.empty((), dtype=torch.float32, device=device)
    per = torch.empty((len(tensors) if per_tensor else 0,), dtype=torch.float32, device=device)
    return total, per


def multi_tensor_norm(tensors, ord=2.0, per_tensor=False, inv_scale=None):
    device = checks.norm_args(tensors, ord, inv_scale=inv_scale)
    return _norm_outputs(tensors, per_tensor, device)


def multi_tensor_unscale_norm_(tensors, inv_scale, found_inf, ord=2.0, per_tensor=False):
    device = checks.unscale_norm_args(tensors, inv_scale, found_inf, ord)
    return _norm_outputs(tensors, per_tensor, device)


def clip_grad_norm_(grads, max_norm, ord=2.0):
    checks.clip_args(grads, max_norm, ord)
    device = grads[0].device if len(grads) else torch.device("cpu")
    return torch.empty((), dtype=torch.float32, device=device)


def lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1,
                  beta2, eps, weight_decay, bias_correction, grad_averaging, grad_scale=None,
                  found_inf=None):
    device = checks.lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                      state_steps, beta1, beta2, eps, weight_decay,
                                      bias_correction, grad_averaging, grad_scale, found_inf)
    return torch.empty((len(params), 3), dtype=torch.float64, device=device)


def _checks_only(check):
    def fake(*args, **kwargs):
        check(*args, **kwargs)
    return fake


FAKES = {
    "multi_tensor_norm": multi_tensor_norm,
    "multi_tensor_unscale_norm_": multi_tensor_unscale_norm_,
    "clip_grad_norm_": clip_grad_norm_,
    "lamb_moments_": lamb_moments_,
    "multi_tensor_scale_": _checks_only(checks.scale_args),
    "adam_": _checks_only(checks.adam_args),
    "sgd_": _checks_only(checks.sgd_args),
    "lamb_": _checks_only(checks.lamb_args),
    "lars_": _checks_only(checks.lars_args),
    "lamb_apply_": _checks_only(checks.lamb_apply_args),
}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"fastdyn::{_name}", _fake)
