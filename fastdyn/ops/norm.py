"""Python entry points of the norm, scale, unscale and clip ops."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch

from fastdyn.ops import checks
from fastdyn.ops.registry import call


def _as_list(tensors) -> list:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    return list(tensors)


def multi_tensor_norm(tensors: Iterable[torch.Tensor], ord: float = 2.0, per_tensor: bool = False,
                      inv_scale: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Norm (2 or inf) of all `tensors` taken as one vector, and of each of them when
    `per_tensor`: float32 results on the tensors' device, one pass over memory, fp32 (or
    wider) accumulation, the same bits on every run.

    With `inv_scale` (a one-element float tensor on their device), the norms of the tensors
    times inv_scale, nothing written: loss-scaled gradients measured unscaled. Their squares
    are then taken in float64, so neither a large scale (a gradient of 0.1 times 2^76
    squares past float32's range) nor the unscaling (squares of 1e-24) leaves float32's."""
    tensors = _as_list(tensors)
    ord = float(ord)
    if not tensors:
        if inv_scale is not None:
            checks.norm_args(tensors, ord, inv_scale=inv_scale)
        device = inv_scale.device if isinstance(inv_scale, torch.Tensor) else None
        total = torch.zeros((), dtype=torch.float32, device=device)
        return total, (torch.zeros(0, dtype=torch.float32, device=device) if per_tensor else None)
    if ord == 2.0 or ord == math.inf:
        total, per = call("multi_tensor_norm", tensors[0].device,
                          lambda: checks.norm_args(tensors, ord, inv_scale=inv_scale),
                          tensors, ord, per_tensor, inv_scale)
    else:
        from fastdyn.reference import multi_tensor_norm as reference_norm

        total, per = reference_norm(tensors, ord, per_tensor, inv_scale)
    return total, (per if per_tensor else None)


def multi_tensor_l2norm(tensors: Iterable[torch.Tensor], per_tensor: bool = False,
                        inv_scale: Optional[torch.Tensor] = None):
    """Global L2 norm of `tensors` and, with `per_tensor`, the norm of each: (total,
    per_tensor_or_None); with `inv_scale`, of the tensors times it (multi_tensor_norm)."""
    return multi_tensor_norm(tensors, 2.0, per_tensor, inv_scale)


def multi_tensor_scale_(tensors: Iterable[torch.Tensor], scale: torch.Tensor) -> None:
    """tensors *= scale in place; nothing is read or written when scale == 1 (checked on the device)."""
    tensors = _as_list(tensors)
    if not tensors:
        return
    call("multi_tensor_scale_", tensors[0].device, lambda: checks.scale_args(tensors, scale),
         tensors, scale)


def multi_tensor_unscale_norm_(tensors: Iterable[torch.Tensor], inv_scale: torch.Tensor,
                               found_inf: torch.Tensor, ord: float = 2.0, per_tensor: bool = False):
    """One read and one write of every tensor: tensors *= inv_scale, found_inf = 1 if any
    element was inf/NaN, and the norms of the unscaled tensors (total, per_tensor_or_None)."""
    tensors = _as_list(tensors)
    if not tensors:
        total = torch.zeros((), dtype=torch.float32, device=found_inf.device)
        return total, (torch.zeros(0, device=found_inf.device) if per_tensor else None)
    total, per = call("multi_tensor_unscale_norm_", tensors[0].device,
                      lambda: checks.unscale_norm_args(tensors, inv_scale, found_inf, ord),
                      tensors, inv_scale, found_inf, float(ord), per_tensor)
    return total, (per if per_tensor else None)


def clip_grads_(grads: list, max_norm: float, ord: float = 2.0) -> torch.Tensor:
    """Fused norm + clip of tensors on one device; returns the float32 total norm."""
    return call("clip_grad_norm_", grads[0].device, lambda: checks.clip_args(grads, max_norm, ord),
                grads, float(max_norm), float(ord))
