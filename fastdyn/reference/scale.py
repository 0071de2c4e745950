import torch

from fastdyn.ops.checks import check_float_list, check_scalar_tensor


def multi_tensor_scale_(tensors, scale):
    device = check_float_list("tensors", tensors)
    if device is not None:
        check_scalar_tensor("scale", scale, device)
    s = float(scale)
    if s == 1.0:
        return
    for t in tensors:
        t.copy_(t.double() * s)
