from fastdyn.ops.checks import scale_args


def multi_tensor_scale_(tensors, scale):
    scale_args(tensors, scale)
    s = float(scale)
    if s == 1.0:
        return
    for t in tensors:
        t.copy_(t.double() * s)
