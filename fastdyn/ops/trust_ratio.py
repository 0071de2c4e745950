"""LAMB's and LARS's per-tensor trust ratios from per-tensor norms, as device tensor ops
(the math of csrc/include/fastdyn/math/{lamb,lars}.h): for the Triton backend and for the
steps on sharded DTensors, whose norms are all-reduced before the ratios are taken."""

import torch


def adapting(weight_decay, always_adapt: bool):
    """LAMB's and LARS's rule, weight_decay != 0 or always_adapt: a bool (a guard under
    torch.compile), or for a tensor weight_decay a one-element bool tensor (no host read)."""
    return True if always_adapt else weight_decay != 0


def where_adapting(ratios: torch.Tensor, adapt) -> torch.Tensor:
    """ratios, or 1 without adaptation (`adapt` as `adapting` gives it)."""
    if isinstance(adapt, torch.Tensor):
        return torch.where(adapt.to(ratios.device), ratios, torch.ones_like(ratios))
    return ratios if adapt else torch.ones_like(ratios)


def lamb_trust_ratios(param_norms: torch.Tensor, update_norms: torch.Tensor, adapt,
                      trust_clip: bool) -> torch.Tensor:
    """r = ||p|| / ||u|| where both are > 0, else 1; min(r, 1) with trust_clip; 1 unless
    adapting (`adapt` as `adapting` gives it)."""
    ones = torch.ones_like(param_norms)
    r = torch.where((param_norms > 0) & (update_norms > 0), param_norms / update_norms, ones)
    return where_adapting(r.clamp(max=1.0) if trust_clip else r, adapt)


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
