"""Python entry points of the fused optimizer updates: each runs one (device, dtype) group
on the current backend. Arguments are those of the schemas in csrc/ops.cpp, passed by
position: torch 2.11's custom_op finds mutated arguments by position only (a mutated
`stats` passed by keyword raised IndexError there, seen on an H100)."""

from fastdyn.ops import checks
from fastdyn.ops.registry import call


def _explain(params, grads, states: dict, master_params, steps, lr, grad_scale, found_inf, stats):
    return lambda: checks.check_update_group(params, grads, states, master_params, steps, lr,
                                             grad_scale, found_inf, stats)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale=None, found_inf=None, stats=None):
    explain = _explain(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
                                       "max_exp_avg_sqs": max_exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats)
    call("adam_", lr.device, explain,
         params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
         beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
         grad_scale, found_inf, stats)


def sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale=None, found_inf=None, stats=None):
    explain = _explain(params, grads, {"momentum_buffers": momentum_buffers}, master_params, [],
                       lr, grad_scale, found_inf, stats)
    call("sgd_", lr.device, explain,
         params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale, found_inf, stats)


def lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
          weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
          grad_scale=None, found_inf=None, stats=None):
    explain = _explain(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats)
    call("lamb_", lr.device, explain,
         params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
         weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
         grad_scale, found_inf, stats)


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None):
    explain = _explain(params, grads, {"momentum_buffers": momentum_buffers}, master_params, [],
                       lr, grad_scale, found_inf, stats)
    call("lars_", lr.device, explain,
         params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
         grad_scale, found_inf, stats)
