"""Argument checks of the Python-side backends (Triton, reference), with the same
messages as the C++ launchers (csrc/include/fastdyn/checks.h), so a bad call fails the
same way whichever backend runs it, before anything is written."""

from __future__ import annotations

import math
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float_list(name: str, tensors: Sequence[torch.Tensor], device=None):
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided:
            raise ValueError(
                f"{name}[{i}] is sparse or not strided (layout {t.layout}); "
                "fastdyn ops need dense tensors"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name}[{i}] has dtype {t.dtype}; fastdyn ops take float32, float16, "
                "bfloat16 or float64 tensors"
            )
        if not _dense(t):
            raise ValueError(
                f"{name}[{i}] is not dense (a view with gaps or overlaps, strides {t.stride()}); "
                "pass a contiguous tensor"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{name}[{i}] is on {t.device} but the other tensors are on {device}")
    return device


def _dense(t: torch.Tensor) -> bool:
    if t.is_contiguous():
        return True
    # non-overlapping and dense: some permutation of the dims is contiguous
    dims = sorted(range(t.dim()), key=lambda d: t.stride(d))
    expected = 1
    for d in dims:
        if t.size(d) != 1 and t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def refuse_internal_overlap(t: torch.Tensor) -> None:
    """torch's refusal (and words) of an in-place write to a tensor whose elements share
    memory (an expanded view): the gradients a clip or an unscale_ would write."""
    if not _dense(t) and torch._debug_has_internal_overlap(t) == 1:
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation.")


def check_same_length(name: str, n: int, ref_name: str, ref_n: int):
    if n != ref_n:
        raise ValueError(f"{name} has {n} tensors but {ref_name} has {ref_n}")


_MEMORY_FORMATS = {4: (torch.contiguous_format, torch.channels_last),
                   5: (torch.contiguous_format, torch.channels_last_3d)}


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same walk order in memory: strides agree wherever the size is above 1 (a size-1
    dim's stride is arbitrary); an empty pair has nothing to walk."""
    if a.numel() == 0:
        return True
    # Both dense in one memory format: the same order, no stride read. Dynamo (torch 2.14)
    # cannot trace the strides of a view into a larger buffer (DDP's gradient_as_bucket_view,
    # Megatron's flat gradient buffer): reading one failed every compiled step with them.
    for memory_format in _MEMORY_FORMATS.get(a.dim(), (torch.contiguous_format,)):
        if a.is_contiguous(memory_format=memory_format) \
                and b.is_contiguous(memory_format=memory_format):
            return True
    # stride(d), not stride(): dynamo of torch 2.14 cannot trace the tuple of a .grad's strides
    return all(a.shape[d] == 1 or a.stride(d) == b.stride(d) for d in range(a.dim()))


def check_like(name, tensors, ref_name, ref):
    check_same_length(name, len(tensors), ref_name, len(ref))
    for i, (t, r) in enumerate(zip(tensors, ref)):
        if t.shape != r.shape:
            raise ValueError(
                f"{name}[{i}] has shape {list(t.shape)} but {ref_name}[{i}] has shape {list(r.shape)}"
            )
        if t.stride() != r.stride() and not same_layout(t, r):
            raise ValueError(
                f"{name}[{i}] has strides {list(t.stride())} but {ref_name}[{i}] has strides "
                f"{list(r.stride())}; both must have the same memory layout"
            )


def check_no_shared_memory(written=(), read=(), written_single=()):
    """Mirror of check_no_shared_memory in checks.h: what an op writes (`written`: (name,
    tensors) lists; `written_single`: (name, tensor)) and the scalars it reads while writing
    (`read`: (name, tensor or None)) share no memory. Fake and meta tensors (the fake
    kernels under torch.compile) have no memory to compare."""
    uses = [(name, [t], False, True) for name, t in read if t is not None]
    uses += [(name, [t], True, True) for name, t in written_single if t is not None]
    uses += [(name, ts, True, False) for name, ts in written]
    # (first byte, one past the last, use, index) of the plain tensors; dense tensors'
    # bytes run from their data pointer. Subclasses (FakeTensor, DTensor: their data
    # pointer is not their memory) are left out; the ops see DTensors' local tensors.
    # Lists allocated in order are sorted runs, which timsort merges.
    spans = [(b := t.data_ptr(), b + t.nbytes, k, i) for k, (_, ts, _, _) in enumerate(uses)
             for i, t in enumerate(ts) if has_own_memory(t) and t.nbytes]
    if not spans or uses[spans[0][2]][1][spans[0][3]].is_meta:
        return  # meta tensors have no memory (a list mixing devices is refused elsewhere)
    spans.sort()
    # one sweep: a span starting before the furthest end of one it may not overlap (any,
    # if it is written; a written one, if it is read) overlaps that one
    furthest_any = furthest_written = None
    for span in spans:
        written = uses[span[2]][2]
        other = furthest_any if written else furthest_written
        if other is not None and span[0] < other[1]:
            both = written and uses[other[2]][2]
            raise ValueError(
                f"{_describe(uses, other)} and {_describe(uses, span)} share memory (the same "
                f"tensor twice, or overlapping views) and the op writes "
                f"{'both' if both else 'one of them'}: pass separate tensors"
            )
        if furthest_any is None or span[1] > furthest_any[1]:
            furthest_any = span
        if written and (furthest_written is None or span[1] > furthest_written[1]):
            furthest_written = span


def has_own_memory(t: torch.Tensor) -> bool:
    """Whether t's data_ptr is its own memory: a tensor, a parameter, or a Python subclass of
    them that leaves dispatch alone (FSDP1's FlatParameter, a user's Parameter class). Not a
    wrapper subclass such as DTensor or FakeTensor. (An exact type test had let Parameter
    subclasses share memory unchecked.)"""
    return type(t).__torch_dispatch__ is torch.Tensor.__torch_dispatch__


def _describe(uses, span):
    name, _, _, single = uses[span[2]]
    return name if single else f"{name}[{span[3]}]"


def common_dtype(name, tensors):
    dtype = tensors[0].dtype
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != dtype:
            raise TypeError(
                f"{name}[{i}] has dtype {t.dtype} but {name}[0] has {dtype}; split the list by dtype"
            )
    return dtype


def check_scalar_tensor(name, t, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.numel() != 1:
        raise ValueError(f"{name} must hold one value, got shape {list(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the tensors it applies to are on {device}")


def check_norm_ord(ord: float):
    if not (ord == 2.0 or (math.isinf(ord) and ord > 0)):
        raise ValueError(f"ord must be 2 or inf, got {ord} (other norms go through fastdyn.reference)")


def empty_list_device(*scalars) -> torch.device:
    """The device of an update on an empty list: its scalars' (lamb_moments_ has no lr)."""
    return next((t.device for t in scalars if t is not None), torch.device("cpu"))


def check_update_group(params, grads, states: dict, master_params, steps, lr, grad_scale,
                       found_inf, stats, hypers: dict, trust_ratios=None):
    """Mirror of check_update_group in csrc/include/fastdyn/optimizer_checks.h. `hypers`:
    the hyperparameters read from one-element tensors (beta1, momentum), by name."""
    device = check_float_list("params", params)
    if device is None:
        device = empty_list_device(lr, grad_scale, found_inf, *(
            t for t in hypers.values() if isinstance(t, torch.Tensor)))
    if lr is not None:  # None: LAMB's moment pass, which takes no learning rate
        check_scalar_tensor("lr", lr, device)
    for name, t in hypers.items():
        check_scalar_tensor(name, t, device)
    if grad_scale is not None:
        check_scalar_tensor("grad_scale", grad_scale, device)
    if found_inf is not None:
        check_scalar_tensor("found_inf", found_inf, device)
    check_same_length("grads", len(grads), "params", len(params))
    if not params:
        return device
    pdtype = common_dtype("params", params)
    check_float_list("grads", grads, device)
    check_like("grads", grads, "params", params)
    if common_dtype("grads", grads) != pdtype:
        raise TypeError(f"grads have dtype {grads[0].dtype} but params have {pdtype}")
    sdtype = None
    for name, lst in states.items():
        if not lst:
            continue
        check_float_list(name, lst, device)
        check_like(name, lst, "params", params)
        t = common_dtype(name, lst)
        if sdtype is not None and t != sdtype:
            raise TypeError(f"{name} has dtype {t} but the other optimizer state has {sdtype}")
        sdtype = t
    # No state lists (SGD without momentum): nothing to match; fp32 goes with master weights.
    sdtype = sdtype or (torch.float32 if master_params else pdtype)
    if sdtype != pdtype and not (sdtype == torch.float32 and pdtype in (torch.float16, torch.bfloat16)):
        raise TypeError(
            f"optimizer state has dtype {sdtype} for params of dtype {pdtype}; state must match "
            "the params, or be float32 for float16/bfloat16 params"
        )
    if master_params:
        check_float_list("master_params", master_params, device)
        check_like("master_params", master_params, "params", params)
        if common_dtype("master_params", master_params) != torch.float32:
            raise TypeError(f"master_params must be float32, got {master_params[0].dtype}")
        if pdtype not in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"master_params are for float16/bfloat16 params, got params of dtype {pdtype}"
            )
        if sdtype != torch.float32:
            raise TypeError(f"with master_params the optimizer state must be float32, got {sdtype}")
    if steps:
        check_same_length("state_steps", len(steps), "params", len(params))
        for i, s in enumerate(steps):
            if s.numel() != 1:
                raise ValueError(f"state_steps[{i}] must be a one-element tensor")
            if s.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"state_steps[{i}] must be float32 or float64, got {s.dtype}")
            if s.device != device:
                raise ValueError(f"state_steps[{i}] is on {s.device} but params are on {device}")
            if s.dtype != steps[0].dtype:
                raise TypeError(f"state_steps[{i}] is {s.dtype} but state_steps[0] is "
                                f"{steps[0].dtype}: the steps must share one dtype")
    if stats is not None:
        if stats.device != device:
            raise ValueError(f"stats is on {stats.device} but params are on {device}")
        if stats.dtype != torch.float32:
            raise TypeError(f"stats must be float32, got {stats.dtype}")
        if stats.dim() != 2 or stats.shape != (len(params), 4) or not stats.is_contiguous():
            raise ValueError(
                f"stats must be a contiguous float32 tensor of shape [{len(params)}, 4], "
                f"got shape {list(stats.shape)}"
            )
    check_no_shared_memory(
        written=[("params", params), ("state_steps", steps), *states.items(),
                 ("master_params", master_params or [])],
        written_single=[("stats", stats)],
        read=[("lr", lr), ("grad_scale", grad_scale), ("found_inf", found_inf),
              ("trust_ratios", trust_ratios), *hypers.items()])
    return device


# ---- every op's arguments, checked in one place: by the fake (meta) kernels, the Triton
# ops and the references, as the C++ launchers check theirs. A fake kernel that checked
# nothing let [cpu tensor, meta tensor] dispatch to it and return an uninitialised "norm".

def norm_args(tensors, ord=2.0, per_tensor=False, inv_scale=None):
    check_norm_ord(ord)
    device = check_float_list("tensors", tensors)
    if inv_scale is None:
        return device
    # an empty list with an inv_scale is on inv_scale's device
    check_scalar_tensor("inv_scale", inv_scale, device or inv_scale.device)
    return device or inv_scale.device


def scale_args(tensors, scale):
    device = check_float_list("tensors", tensors)
    # an empty list still needs a one-element scale (on its own device): the kernels read it
    check_scalar_tensor("scale", scale,
                        device if device is not None else getattr(scale, "device", None))
    check_no_shared_memory(written=[("tensors", tensors)], read=[("scale", scale)])
    return device


def unscale_norm_args(tensors, inv_scale, found_inf, ord=2.0, per_tensor=False):
    device = norm_args(tensors, ord)
    if device is None:  # an empty list: inv_scale and found_inf name the device
        device = found_inf.device if isinstance(found_inf, torch.Tensor) else None
    if device is not None:
        check_scalar_tensor("inv_scale", inv_scale, device)
        check_scalar_tensor("found_inf", found_inf, device)
        # written as GradScaler's is, on every backend
        if found_inf.dtype != torch.float32:
            raise TypeError(f"found_inf must be float32 (as GradScaler's), got {found_inf.dtype}")
        check_no_shared_memory(written=[("tensors", tensors)], read=[("inv_scale", inv_scale)],
                               written_single=[("found_inf", found_inf)])
    return device


def clip_args(grads, max_norm, ord=2.0):
    check_norm_ord(ord)
    device = check_float_list("grads", grads)
    check_no_shared_memory(written=[("grads", grads)])
    return device


def adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
              lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
              grad_scale=None, found_inf=None, stats=None):
    check_update_group(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
                                       "max_exp_avg_sqs": max_exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats,
                       {"beta1": beta1, "weight_decay": weight_decay})
    check_same_length("exp_avgs", len(exp_avgs), "params", len(params))
    check_same_length("exp_avg_sqs", len(exp_avg_sqs), "params", len(params))
    check_same_length("state_steps", len(state_steps), "params", len(params))
    if amsgrad:
        check_same_length("max_exp_avg_sqs", len(max_exp_avg_sqs), "params", len(params))


def sgd_args(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
             weight_decay, nesterov, maximize, is_first_step, grad_scale=None, found_inf=None,
             stats=None):
    check_update_group(params, grads, {"momentum_buffers": momentum_buffers}, master_params, [],
                       lr, grad_scale, found_inf, stats,
                       {"momentum": momentum, "weight_decay": weight_decay})
    if momentum_buffers:  # none: no momentum
        check_same_length("momentum_buffers", len(momentum_buffers), "params", len(params))


def check_trust_ratios(trust_ratios, n: int, device):
    """Per-tensor trust ratios handed to an update op: [n] floating point on `device`."""
    if not isinstance(trust_ratios, torch.Tensor):
        raise TypeError(f"trust_ratios must be a tensor, got {type(trust_ratios).__name__}")
    if trust_ratios.device != device:
        raise ValueError(f"trust_ratios is on {trust_ratios.device} but params are on {device}")
    if not trust_ratios.is_floating_point():
        raise TypeError(f"trust_ratios must be floating point, got {trust_ratios.dtype}")
    if trust_ratios.shape != (n,):
        raise ValueError(f"trust_ratios must have shape [{n}], got {list(trust_ratios.shape)}")


def lars_args(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
              weight_decay, nesterov, trust_coeff, eps, trust_clip, always_adapt, is_first_step,
              grad_scale=None, found_inf=None, stats=None, trust_ratios=None):
    device = check_update_group(params, grads, {"momentum_buffers": momentum_buffers},
                                master_params, [], lr, grad_scale, found_inf, stats,
                                {"momentum": momentum, "weight_decay": weight_decay},
                                trust_ratios if isinstance(trust_ratios, torch.Tensor) else None)
    if momentum_buffers:  # none: no momentum
        check_same_length("momentum_buffers", len(momentum_buffers), "params", len(params))
    if trust_ratios is not None:
        check_trust_ratios(trust_ratios, len(params), device)


def lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2,
              eps, weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
              grad_scale=None, found_inf=None, stats=None):
    check_update_group(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                       master_params, state_steps, lr, grad_scale, found_inf, stats,
                       {"beta1": beta1, "weight_decay": weight_decay})
    check_same_length("exp_avgs", len(exp_avgs), "params", len(params))
    check_same_length("exp_avg_sqs", len(exp_avg_sqs), "params", len(params))
    check_same_length("state_steps", len(state_steps), "params", len(params))


def lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1,
                      beta2, eps, weight_decay, bias_correction, grad_averaging, grad_scale=None,
                      found_inf=None):
    device = check_update_group(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                                master_params, state_steps, None, grad_scale, found_inf, None,
                                {"beta1": beta1, "weight_decay": weight_decay})
    check_same_length("exp_avgs", len(exp_avgs), "params", len(params))
    check_same_length("exp_avg_sqs", len(exp_avg_sqs), "params", len(params))
    check_same_length("state_steps", len(state_steps), "params", len(params))
    return device


def lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                    beta1, beta2, eps, weight_decay, bias_correction, found_inf=None):
    # no gradients are read: params stand in for them
    device = check_update_group(params, params, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                                master_params, state_steps, lr, None, found_inf, None,
                                {"beta1": beta1, "weight_decay": weight_decay},
                                trust_ratios if isinstance(trust_ratios, torch.Tensor) else None)
    check_same_length("exp_avgs", len(exp_avgs), "params", len(params))
    check_same_length("exp_avg_sqs", len(exp_avg_sqs), "params", len(params))
    check_same_length("state_steps", len(state_steps), "params", len(params))
    check_trust_ratios(trust_ratios, len(params), device)
