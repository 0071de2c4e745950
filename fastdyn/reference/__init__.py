"""Plain single-tensor PyTorch versions of every fastdyn op, computed in float64: the truth
the kernels are tested against, and the `reference` backend. Same signatures as the ops in
torch.ops.fastdyn. They may read device scalars on the host (they are not a hot path)."""

from fastdyn.reference.adam import adam_
from fastdyn.reference.clip import clip_grad_norm_
from fastdyn.reference.lamb import lamb_, lamb_apply_, lamb_moments_
from fastdyn.reference.lars import lars_
from fastdyn.reference.norm import multi_tensor_norm
from fastdyn.reference.optimizers import LambReference, LarsReference
from fastdyn.reference.scale import multi_tensor_scale_
from fastdyn.reference.sgd import sgd_
from fastdyn.reference.unscale import multi_tensor_unscale_norm_

__all__ = [
    "adam_",
    "clip_grad_norm_",
    "LambReference",
    "LarsReference",
    "lamb_",
    "lamb_apply_",
    "lamb_moments_",
    "lars_",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "multi_tensor_unscale_norm_",
    "sgd_",
]
