import torch

from fastdyn.ops.checks import adam_args
from fastdyn.reference._update import begin_step, param_value, store, write_stats


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale=None, found_inf=None, stats=None):
    adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
              lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
              grad_scale, found_inf, stats)
    if not params:
        return
    skip, lr, inv = begin_step(state_steps, lr, grad_scale, found_inf)
    if skip:
        return
    beta1, weight_decay = float(beta1), float(weight_decay)
    for i in range(len(params)):
        p = param_value(params, master_params, i)
        g = grads[i].double() * inv
        g_seen = g
        if maximize:
            g = -g
        p_before = p
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p_before
        m = exp_avgs[i].double() * beta1 + (1 - beta1) * g
        v = exp_avg_sqs[i].double() * beta2 + (1 - beta2) * g * g
        t = float(state_steps[i])
        bc1 = 1 - beta1 ** t
        bc2 = 1 - beta2 ** t
        second = v
        if amsgrad:
            second = torch.maximum(max_exp_avg_sqs[i].double(), v)
            max_exp_avg_sqs[i].copy_(second)
        p = p - (lr / bc1) * m / (second.sqrt() / bc2 ** 0.5 + eps)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        held = store(params, master_params, i, p)
        write_stats(stats, i, g_seen, p_before, held)
