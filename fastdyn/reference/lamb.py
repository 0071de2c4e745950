"""LAMB as DESIGN.md's contract states it, in float64."""

import torch

from fastdyn.ops.checks import lamb_apply_args, lamb_args, lamb_moments_args
from fastdyn.reference._update import (begin_step, param_value, rounds_into_param, store,
                                       write_stats)


def lamb_trust_ratio(param_norm: float, update_norm: float, adapt: bool, trust_clip: bool):
    if not adapt:
        return 1.0
    r = param_norm / update_norm if (param_norm > 0 and update_norm > 0) else 1.0
    return min(r, 1.0) if trust_clip else r


def lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2,
          eps, weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
          grad_scale=None, found_inf=None, stats=None):
    lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2,
              eps, weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
              grad_scale, found_inf, stats)
    if not params:
        return
    skip, lr, inv = begin_step(state_steps, lr, grad_scale, found_inf)
    if skip:
        return
    beta1, weight_decay = float(beta1), float(weight_decay)
    adapt = weight_decay != 0 or always_adapt
    for i in range(len(params)):
        p, g, u = _moments_and_direction(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                         state_steps, i, inv, beta1, beta2, eps, weight_decay,
                                         bias_correction, grad_averaging)
        u_norm = float(u.norm())
        r = lamb_trust_ratio(float(p.norm()), u_norm, adapt, trust_clip)
        held = store(params, master_params, i, p - lr * r * u)
        # lr * r * ||u||, the stored change but for the rounding of p, except where the
        # rounding into a 16-bit param drops part of the update
        rounded = rounds_into_param(params, master_params, i)
        write_stats(stats, i, g, p, held, r, update_norm=None if rounded else lr * r * u_norm)


def _direction(p, m, v, beta1, beta2, eps, weight_decay, bias_correction, step):
    bc1 = 1 - beta1 ** step if bias_correction else 1.0
    bc2 = 1 - beta2 ** step if bias_correction else 1.0
    u = (m / bc1) / ((v / bc2).sqrt() + eps)
    return u + weight_decay * p if weight_decay != 0 else u


def _moments_and_direction(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, i,
                           inv, beta1, beta2, eps, weight_decay, bias_correction, grad_averaging):
    """Steps 2-4 for tensor i: m and v updated in place; (p, unscaled g, u) in float64.

    u is computed from the moments as stored, as the fused kernels must: their second pass
    recomputes u from memory, so both passes use the stored values. With 16-bit state this
    is the contract, not a detail: a subnormal fp16 v (below 6e-5) holds 1-3 significant
    bits, so sqrt(v) stored and unrounded differ by percents on the largest updates."""
    p = param_value(params, master_params, i)
    g = grads[i].double() * inv
    exp_avgs[i].copy_(beta1 * exp_avgs[i].double() + ((1 - beta1) if grad_averaging else 1.0) * g)
    exp_avg_sqs[i].copy_(beta2 * exp_avg_sqs[i].double() + (1 - beta2) * g * g)
    u = _direction(p, exp_avgs[i].double(), exp_avg_sqs[i].double(), beta1, beta2, eps,
                   weight_decay, bias_correction, float(state_steps[i]))
    return p, g, u


def lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
                  eps, weight_decay, bias_correction, grad_averaging, grad_scale=None,
                  found_inf=None):
    """LAMB's steps 2-4 (moments, u) of every tensor: (sum g^2, sum p^2, sum u^2) [n, 3]."""
    device = lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps,
                               beta1, beta2, eps, weight_decay, bias_correction, grad_averaging,
                               grad_scale, found_inf)
    sums = torch.full((len(params), 3), float("nan"), dtype=torch.float64, device=device)
    skip, _, inv = begin_step(state_steps, 0.0, grad_scale, found_inf)
    if skip:
        return sums
    beta1, weight_decay = float(beta1), float(weight_decay)
    for i in range(len(params)):
        p, g, u = _moments_and_direction(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                         state_steps, i, inv, beta1, beta2, eps, weight_decay,
                                         bias_correction, grad_averaging)
        sums[i] = torch.stack([g.square().sum(), p.square().sum(), u.square().sum()])
    return sums


def lamb_apply_(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                beta1, beta2, eps, weight_decay, bias_correction, found_inf=None):
    """LAMB's step 6 with the given trust ratios: p <- p - lr r u (u from the stored moments)."""
    lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                    beta1, beta2, eps, weight_decay, bias_correction, found_inf)
    skip, lr, _ = begin_step([], lr, None, found_inf)
    if skip:
        return
    beta1, weight_decay = float(beta1), float(weight_decay)
    for i in range(len(params)):
        p = param_value(params, master_params, i)
        u = _direction(p, exp_avgs[i].double(), exp_avg_sqs[i].double(), beta1, beta2, eps,
                       weight_decay, bias_correction, float(state_steps[i]))
        store(params, master_params, i, p - lr * float(trust_ratios[i]) * u)
