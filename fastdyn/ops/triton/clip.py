"""Triton clip_grad_norm_ (mirrors csrc/cuda/clip.cu): norm, coefficient on the device,
scaling whose programs stop at once when the coefficient is 1."""

import math

from fastdyn.ops.triton.norm import norms, scale_


def clip_grad_norm_(grads, max_norm: float, ord: float):
    total, _ = norms(grads, math.isinf(ord))
    coef = max_norm / (total + 1e-6)
    # clamp, not where(coef < 1): NaN < 1 is False, and a NaN norm must reach the grads
    coef = coef.clamp(max=1.0)
    scale_(grads, coef)
    return total
