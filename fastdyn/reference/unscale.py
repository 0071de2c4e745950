import torch

from fastdyn.ops.checks import unscale_norm_args
from fastdyn.reference.norm import tensor_norms


def multi_tensor_unscale_norm_(tensors, inv_scale, found_inf, ord: float = 2.0,
                               per_tensor: bool = False):
    device = unscale_norm_args(tensors, inv_scale, found_inf, ord)
    inv = float(inv_scale)
    for t in tensors:
        if not torch.isfinite(t).all():
            found_inf.fill_(1.0)
        # As the kernels: the unscaled value is rounded to the tensor's dtype before the norm.
        t.copy_(t.double() * inv)
    total, per = tensor_norms(tensors, ord)
    per_out = torch.stack(per).float() if (per_tensor and per) else torch.zeros(0, device=device)
    return total.float(), per_out
