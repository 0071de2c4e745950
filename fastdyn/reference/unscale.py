import torch

from fastdyn.ops.checks import check_float_list, check_norm_ord, check_scalar_tensor
from fastdyn.reference.norm import tensor_norms


def multi_tensor_unscale_norm_(tensors, inv_scale, found_inf, ord: float = 2.0,
                               per_tensor: bool = False):
    check_norm_ord(ord)
    device = check_float_list("tensors", tensors)
    if device is not None:
        check_scalar_tensor("inv_scale", inv_scale, device)
        check_scalar_tensor("found_inf", found_inf, device)
    inv = float(inv_scale)
    for t in tensors:
        if not torch.isfinite(t).all():
            found_inf.fill_(1.0)
        # As the kernels: the unscaled value is rounded to the tensor's dtype before the norm.
        t.copy_(t.double() * inv)
    total, per = tensor_norms(tensors, ord)
    per_out = torch.stack(per).float() if (per_tensor and per) else torch.zeros(0, device=device)
    return total.float(), per_out
