from fastdyn.ops.checks import clip_args
from fastdyn.reference.norm import tensor_norms


def clip_coefficient(total: float, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s rule; NaN stays NaN."""
    coef = max_norm / (total + 1e-6)
    return coef if (coef < 1.0 or coef != coef) else 1.0


def clip_grad_norm_(grads, max_norm: float, ord: float = 2.0):
    clip_args(grads, max_norm, ord)
    total, _ = tensor_norms(grads, ord)
    coef = clip_coefficient(float(total), float(max_norm))
    if coef != 1.0:
        for g in grads:
            g.copy_(g.double() * coef)
    return total.float()
