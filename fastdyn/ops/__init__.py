"""fastdyn's ops: Python entry points over torch.ops.fastdyn.* (C++/CUDA), the Triton
kernels (torch.ops.fastdyn_triton.*) and the float64 reference, chosen per device by
fastdyn.ops.backend."""

import fastdyn.ops.fake  # noqa: F401  (fake kernels for torch.compile)
from fastdyn.ops.backend import available_backends, backend_for, use_backend
from fastdyn.ops.norm import (
    multi_tensor_l2norm,
    multi_tensor_norm,
    multi_tensor_scale_,
    multi_tensor_unscale_norm_,
)
from fastdyn.ops.optim import adam_, lamb_, lamb_apply_, lamb_moments_, lars_, sgd_

__all__ = [
    "adam_",
    "available_backends",
    "backend_for",
    "lamb_",
    "lamb_apply_",
    "lamb_moments_",
    "lars_",
    "multi_tensor_l2norm",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "multi_tensor_unscale_norm_",
    "sgd_",
    "use_backend",
]
