"""Triton LARS (mirrors csrc/cuda/lars.cu): per-tensor norms, trust ratios, momentum update."""

import torch

from fastdyn.ops.triton._multi_tensor import as_float32
from fastdyn.ops.triton.norm import per_tensor_partials
from fastdyn.ops.triton.sgd import momentum_update


def lars_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
          nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step, grad_scale=None,
          found_inf=None, stats=None):
    if not params:
        return
    adapt = weight_decay != 0 or always_adapt
    ratios = None
    if adapt:
        g2 = per_tensor_partials(grads, is_max=False)
        if grad_scale is not None:
            g2 = g2 / as_float32(grad_scale).reshape(()) ** 2
        p2 = per_tensor_partials(master_params if master_params else params, is_max=False)
        pn, gn = p2.sqrt(), g2.sqrt()
        r = trust_coeff * pn / (gn + weight_decay * pn + eps)
        r = torch.where((pn > 0) & (gn > 0), r, torch.ones_like(r))
        if trust_clip:
            r = torch.clamp(r / as_float32(lr).reshape(()), max=1.0)
        ratios = r
    momentum_update(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                    weight_decay, nesterov, False, is_first_step, grad_scale, found_inf, stats,
                    lars=True, ratios=ratios)
