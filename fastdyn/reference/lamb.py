"""LAMB as DESIGN.md's contract states it, in float64."""

from fastdyn.ops.checks import lamb_args
from fastdyn.reference._update import begin_step, source, store, write_stats


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
    adapt = weight_decay != 0 or always_adapt
    for i in range(len(params)):
        p = source(params, master_params, i).double()
        g = grads[i].double() * inv
        m = beta1 * exp_avgs[i].double() + ((1 - beta1) if grad_averaging else 1.0) * g
        v = beta2 * exp_avg_sqs[i].double() + (1 - beta2) * g * g
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        t = float(state_steps[i])
        bc1 = 1 - beta1 ** t if bias_correction else 1.0
        bc2 = 1 - beta2 ** t if bias_correction else 1.0
        u = (m / bc1) / ((v / bc2).sqrt() + eps)
        if weight_decay != 0:
            u = u + weight_decay * p
        u_norm = float(u.norm())
        r = lamb_trust_ratio(float(p.norm()), u_norm, adapt, trust_clip)
        new = p - lr * r * u
        store(params, master_params, i, new)
        write_stats(stats, i, g, p, new, r, update_norm=lr * r * u_norm)
