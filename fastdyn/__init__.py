"""fastdyn: fused optimizer steps, gradient norms/clipping and training-dynamics tools for PyTorch."""

__version__ = "0.1.0"

from fastdyn import _extension  # noqa: F401  (loads the kernels: torch.ops.fastdyn.*)
from fastdyn import amp, ops, optim, reference
from fastdyn.clip import clip_grad_norm_
from fastdyn.ops import multi_tensor_l2norm

__all__ = ["amp", "clip_grad_norm_", "multi_tensor_l2norm", "ops", "optim", "reference", "__version__"]
