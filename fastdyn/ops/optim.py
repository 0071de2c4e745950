"""Python entry points of the fused optimizer updates: each runs one (device, dtype) group
on the current backend. Arguments are those of the schemas in csrc/ops.cpp, passed by
position: torch 2.11's custom_op finds mutated arguments by position only (a mutated
`stats` passed by keyword raised IndexError there, seen on an H100)."""

import torch

from fastdyn.ops import checks
from fastdyn.ops.registry import call


def _lr_device(lr) -> torch.device:
    """The device an update dispatches on: its lr's (a tensor: a step's lr changes without a
    recompile or a host-to-device copy)."""
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"lr must be a tensor, got {type(lr).__name__}")
    return lr.device


def _hyper(value, device: torch.device):
    """beta1 / momentum / weight_decay as the ops take them, a one-element tensor (a scheduler
    changes it without a recompile): a tensor is passed as it is; a number becomes a float64
    tensor on the update's device, filled there (no host-to-device copy)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((), float(value), dtype=torch.float64, device=device)


def _explain(params, grads, states: dict, master_params, steps, lr, grad_scale, found_inf, stats,
             hypers: dict):
    return lambda: checks.check_update_group(params, grads, states, master_params, steps, lr,
                                             grad_scale, found_inf, stats, hypers)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale=None, found_inf=None, stats=None):
    beta1 = _hyper(beta1, _lr_device(lr))
    weight_decay = _hyper(weight_decay, _lr_device(lr))
    explain = _explain(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
                                       "max_exp_avg_sqs": max_exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats,
                       {"beta1": beta1, "weight_decay": weight_decay})
    call("adam_", _lr_device(lr), explain,
         params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
         beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
         grad_scale, found_inf, stats)


def sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale=None, found_inf=None, stats=None):
    """momentum_buffers: one per param, or none for plain SGD (momentum is then not read)."""
    momentum = _hyper(momentum, _lr_device(lr))
    weight_decay = _hyper(weight_decay, _lr_device(lr))
    explain = _explain(params, grads, {"momentum_buffers": momentum_buffers}, master_params, [],
                       lr, grad_scale, found_inf, stats,
                       {"momentum": momentum, "weight_decay": weight_decay})
    call("sgd_", _lr_device(lr), explain,
         params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale, found_inf, stats)


def lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
          weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
          grad_scale=None, found_inf=None, stats=None):
    beta1 = _hyper(beta1, _lr_device(lr))
    weight_decay = _hyper(weight_decay, _lr_device(lr))
    explain = _explain(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats,
                       {"beta1": beta1, "weight_decay": weight_decay})
    call("lamb_", _lr_device(lr), explain,
         params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
         weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
         grad_scale, found_inf, stats)


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None, trust_ratios=None):
    """trust_ratios: the caller's per-tensor ratios (e.g. from norms all-reduced over the
    shards of DTensor params); the op then skips its own norm pass. momentum_buffers: as
    sgd_'s."""
    momentum = _hyper(momentum, _lr_device(lr))
    weight_decay = _hyper(weight_decay, _lr_device(lr))
    explain = _explain(params, grads, {"momentum_buffers": momentum_buffers}, master_params, [],
                       lr, grad_scale, found_inf, stats,
                       {"momentum": momentum, "weight_decay": weight_decay})
    call("lars_", _lr_device(lr), explain,
         params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
         grad_scale, found_inf, stats, trust_ratios)


def lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
                  eps, weight_decay, bias_correction, grad_averaging, grad_scale=None,
                  found_inf=None):
    """LAMB's first pass alone: steps advanced, moments updated; returns per tensor
    (sum g^2, sum p^2, sum u^2) as float64 [n, 3] (NaN rows when found_inf skips)."""
    if not params and grad_scale is None and found_inf is None and not any(
            (grads, exp_avgs, exp_avg_sqs, master_params, state_steps)):
        # nothing to dispatch on (the native op raised NotImplementedError; Triton's gave this)
        return torch.empty((0, 3), dtype=torch.float64)
    # (no params: the scalars name the device)
    device = params[0].device if params else checks.empty_list_device(grad_scale, found_inf)
    beta1, weight_decay = _hyper(beta1, device), _hyper(weight_decay, device)
    explain = _explain(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                       master_params, state_steps, None, grad_scale, found_inf, None,
                       {"beta1": beta1, "weight_decay": weight_decay})
    return call("lamb_moments_", device, explain,
                params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
                eps, weight_decay, bias_correction, grad_averaging, grad_scale, found_inf)


def lamb_apply_(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                beta1, beta2, eps, weight_decay, bias_correction, found_inf=None):
    """LAMB's second pass alone: p <- p - lr * trust_ratios[t] * u, u from the stored moments."""
    beta1 = _hyper(beta1, _lr_device(lr))
    weight_decay = _hyper(weight_decay, _lr_device(lr))
    explain = lambda: checks.lamb_apply_args(  # noqa: E731
        params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios, beta1,
        beta2, eps, weight_decay, bias_correction, found_inf)
    call("lamb_apply_", _lr_device(lr), explain,
         params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios, beta1,
         beta2, eps, weight_decay, bias_correction, found_inf)
