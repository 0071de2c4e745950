"""LARS as DESIGN.md's contract states it, in float64."""

import math

from fastdyn.ops.checks import lars_args
from fastdyn.reference._update import begin_step, param_value, store, write_stats
from fastdyn.reference.sgd import momentum_step


def lars_trust_ratio(param_norm, grad_norm, trust_coeff, weight_decay, eps, lr, adapt, trust_clip):
    if not adapt:
        return 1.0
    if param_norm > 0 and grad_norm > 0:
        r = trust_coeff * param_norm / (grad_norm + weight_decay * param_norm + eps)
    else:
        r = 1.0
    if not trust_clip:
        return r
    # IEEE division, as the kernels' (Python's raises at lr = 0): r / 0 is inf, clipped to 1
    scaled = r / lr if lr != 0 else (math.copysign(math.inf, r) if r != 0 else math.nan)
    return min(scaled, 1.0)


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None, trust_ratios=None):
    lars_args(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
              weight_decay, nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
              grad_scale, found_inf, stats, trust_ratios)
    if not params:
        return
    skip, lr, inv = begin_step([], lr, grad_scale, found_inf)
    if skip:
        return
    weight_decay = float(weight_decay)
    adapt = weight_decay != 0 or always_adapt
    for i in range(len(params)):
        p = param_value(params, master_params, i)
        g = grads[i].double() * inv
        if trust_ratios is not None:  # the caller's ratios replace the computed ones
            r = float(trust_ratios[i]) if adapt else 1.0
        else:
            r = lars_trust_ratio(float(p.norm()), float(g.norm()), trust_coeff, weight_decay,
                                 eps, lr, adapt, trust_clip)
        # (no weight decay term at 0, as the kernels and torch's SGD: 0 * a NaN p is NaN)
        d = ((g + weight_decay * p) if weight_decay != 0 else g) * r if adapt else g
        d, buf = momentum_step(d, momentum_buffers[i] if momentum_buffers else None, momentum,
                               dampening, nesterov, is_first_step)
        if buf is not None:
            momentum_buffers[i].copy_(buf)
        new = p - lr * d
        held = store(params, master_params, i, new)
        write_stats(stats, i, g, p, held, r)
