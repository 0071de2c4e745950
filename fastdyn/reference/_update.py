"""What every reference optimizer op does around its math (cf. csrc/include/fastdyn/cpu/update_common.h)."""

import torch


def begin_step(steps, lr, grad_scale, found_inf):
    """(skip, lr, inv_grad_scale); advances the step counters unless found_inf is set."""
    if found_inf is not None and float(found_inf) != 0.0:
        return True, 0.0, 1.0
    for s in steps:
        s.add_(1)
    # a tensor division, as the kernels': a scale of 0 gives inf (a Python 1.0 / 0.0 raised
    # ZeroDivisionError after the steps had advanced)
    inv = float(1.0 / grad_scale.double()) if grad_scale is not None else 1.0
    return False, float(lr), inv


def write_stats(stats, i, grad, param_before, param_after, trust_ratio=1.0, update_norm=None):
    """param_after: the held value as stored (store's return), so that ||update|| is the
    change the step made, rounding included; update_norm, where given, replaces it."""
    if stats is None:
        return
    stats[i, 0] = grad.norm()
    stats[i, 1] = param_before.norm()
    stats[i, 2] = (param_after - param_before).norm() if update_norm is None else update_norm
    stats[i, 3] = trust_ratio


def param_value(params, master_params, i) -> torch.Tensor:
    """Param i's authoritative value (its fp32 master if any) as a float64 copy: a copy even
    for float64 params, or store() overwrites it and the stats saw an update norm of 0."""
    held = master_params[i] if master_params else params[i]
    return held.to(torch.float64, copy=True)


def store(params, master_params, i, value: torch.Tensor) -> torch.Tensor:
    """Writes param i (and its master); returns the held value as stored, in float64."""
    if master_params:
        master_params[i].copy_(value)
    params[i].copy_(value)
    return (master_params[i] if master_params else params[i]).double()


def rounds_into_param(params, master_params, i) -> bool:
    """Whether param i holds its value in 16 bits (no fp32 master): the step's update then
    loses what the rounding into the param drops, so its stats measure the stored change."""
    return not master_params and params[i].dtype in (torch.float16, torch.bfloat16)
