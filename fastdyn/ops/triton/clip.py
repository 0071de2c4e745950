"""Triton clip_grad_norm_ (mirrors csrc/cuda/clip.cu): norm, coefficient on the device,
scaling whose programs stop at once when the coefficient is 1."""

import math

import torch

from fastdyn.ops.triton.norm import finish, per_tensor_partials, scale_


def clip_grad_norm_(grads, max_norm: float, ord: float):
    is_max = math.isinf(ord)
    total, _ = finish(per_tensor_partials(grads, is_max), is_max)
    coef = max_norm / (total + 1e-6)
    coef = torch.where(coef < 1.0, coef, torch.ones_like(coef))  # NaN stays NaN
    scale_(grads, coef)
    return total
