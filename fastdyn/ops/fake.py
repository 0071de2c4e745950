"""Fake (meta) kernels of the native ops, so torch.compile and FakeTensor can trace them
without running them: they check the arguments as the kernels do (fastdyn.ops.checks), then
give the outputs' shapes; the in-place ops return nothing."""

import torch

import fastdyn._extension  # noqa: F401
from fastdyn.ops import checks


def _norm_outputs(tensors, per_tensor, device=None):
    device = tensors[0].device if len(tensors) else (device or torch.device("cpu"))
    total = torch.empty((), dtype=torch.float32, device=device)
    per = torch.empty((len(tensors) if per_tensor else 0,), dtype=torch.float32, device=device)
    return total, per


@torch.library.register_fake("fastdyn::multi_tensor_norm")
def _(tensors, ord=2.0, per_tensor=False):
    checks.norm_args(tensors, ord)
    return _norm_outputs(tensors, per_tensor)


@torch.library.register_fake("fastdyn::multi_tensor_unscale_norm_")
def _(tensors, inv_scale, found_inf, ord=2.0, per_tensor=False):
    device = checks.unscale_norm_args(tensors, inv_scale, found_inf, ord)
    return _norm_outputs(tensors, per_tensor, device)


@torch.library.register_fake("fastdyn::clip_grad_norm_")
def _(grads, max_norm, ord=2.0):
    checks.clip_args(grads, max_norm, ord)
    device = grads[0].device if len(grads) else torch.device("cpu")
    return torch.empty((), dtype=torch.float32, device=device)


@torch.library.register_fake("fastdyn::lamb_moments_")
def _(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2, eps,
      weight_decay, bias_correction, grad_averaging, grad_scale=None, found_inf=None):
    device = checks.lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                      state_steps, beta1, beta2, eps, weight_decay,
                                      bias_correction, grad_averaging, grad_scale, found_inf)
    return torch.empty((len(params), 3), dtype=torch.float64, device=device)


def _checks_only(check):
    def fake(*args, **kwargs):
        check(*args, **kwargs)
    return fake


for _name, _check in (("multi_tensor_scale_", checks.scale_args), ("adam_", checks.adam_args),
                      ("sgd_", checks.sgd_args), ("lamb_", checks.lamb_args),
                      ("lars_", checks.lars_args), ("lamb_apply_", checks.lamb_apply_args)):
    torch.library.register_fake(f"fastdyn::{_name}", _checks_only(_check))
