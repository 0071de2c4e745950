"""Python entry points of the fused optimizer updates: each runs one (device, dtype) group
on the current backend. Arguments are those of the schemas in csrc/ops.cpp."""

from fastdyn.ops.registry import for_device


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale=None, found_inf=None, stats=None):
    for_device("adam_", lr.device)(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
        beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
        grad_scale=grad_scale, found_inf=found_inf, stats=stats)


def sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale=None, found_inf=None, stats=None):
    for_device("sgd_", lr.device)(
        params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
        nesterov, maximize, is_first_step, grad_scale=grad_scale, found_inf=found_inf,
        stats=stats)


def lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
          weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
          grad_scale=None, found_inf=None, stats=None):
    for_device("lamb_", lr.device)(
        params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
        weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
        grad_scale=grad_scale, found_inf=found_inf, stats=stats)


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None):
    for_device("lars_", lr.device)(
        params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
        nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
        grad_scale=grad_scale, found_inf=found_inf, stats=stats)
