"""LAMB's and LARS's per-tensor trust ratios from per-tensor norms, as device tensor ops
(the math of csrc/include/fastdyn/math/{lamb,lars}.h): for the Triton backend and for the
steps on sharded DTensors, whose norms are all-reduced before the ratios are taken."""

import torch


def lamb_trust_ratios(param_norms: torch.Tensor, update_norms: torch.Tensor, adapt,
                      trust_clip: bool) -> torch.Tensor:
    """r = ||p|| / ||u|| where both are > 0, else 1; min(r, 1) with trust_clip; 1 unless adapting.
    adapt: a bool, or a one-element bool tensor (decided on the device)."""
    ones = torch.ones_like(param_norms)
    on_device = isinstance(adapt, torch.Tensor)
    if not on_device and not adapt:  # (a branch, not `is False`: dynamo's bool is a SymBool)
        return ones
    r = torch.where((param_norms > 0) & (update_norms > 0), param_norms / update_norms, ones)
    r = r.clamp(max=1.0) if trust_clip else r
    return torch.where(adapt.to(r.device), r, ones) if on_device else r


def lars_trust_ratios(param_norms: torch.Tensor, grad_norms: torch.Tensor, trust_coeff: float,
                      weight_decay, eps: float, lr: torch.Tensor,
                      trust_clip: bool) -> torch.Tensor:
    """r = trust_coeff ||p|| / (||g|| + weight_decay ||p|| + eps), 1 where a norm is 0;
    min(r / lr, 1) with trust_clip. weight_decay: a number or a one-element tensor."""
    if isinstance(weight_decay, torch.Tensor):
        weight_decay = weight_decay.reshape(()).to(param_norms.dtype)
    r = trust_coeff * param_norms / (grad_norms + weight_decay * param_norms + eps)
    r = torch.where((param_norms > 0) & (grad_norms > 0), r, torch.ones_like(r))
    return (r / lr.reshape(()).to(r.dtype)).clamp(max=1.0) if trust_clip else r
