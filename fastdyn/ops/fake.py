"""Fake (meta) kernels of the native ops, so torch.compile and FakeTensor can trace them
without running them. Outputs only; the in-place ops return nothing."""

import torch

import fastdyn._extension  # noqa: F401


def _norm_outputs(tensors, per_tensor):
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    total = torch.empty((), dtype=torch.float32, device=device)
    per = torch.empty((len(tensors) if per_tensor else 0,), dtype=torch.float32, device=device)
    return total, per


@torch.library.register_fake("fastdyn::multi_tensor_norm")
def _(tensors, ord=2.0, per_tensor=False):
    return _norm_outputs(tensors, per_tensor)


@torch.library.register_fake("fastdyn::multi_tensor_unscale_norm_")
def _(tensors, inv_scale, found_inf, ord=2.0, per_tensor=False):
    return _norm_outputs(tensors, per_tensor)


@torch.library.register_fake("fastdyn::clip_grad_norm_")
def _(grads, max_norm, ord=2.0):
    device = grads[0].device if len(grads) else torch.device("cpu")
    return torch.empty((), dtype=torch.float32, device=device)


def _nothing(*args, **kwargs):
    return None


for _name in ("multi_tensor_scale_", "adam_", "sgd_", "lamb_", "lars_"):
    torch.library.register_fake(f"fastdyn::{_name}", _nothing)
