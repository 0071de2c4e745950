"""Maps an op name and a backend to the callable that runs it. The three backends share
one signature per op (the schema in csrc/ops.cpp)."""

from __future__ import annotations

import functools

import torch

import fastdyn._extension  # noqa: F401  (registers torch.ops.fastdyn)
from fastdyn._extension import WITH_CUDA
from fastdyn.ops.backend import backend_for, check_triton_runs_on

OP_NAMES = (
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "multi_tensor_unscale_norm_",
    "clip_grad_norm_",
    "adam_",
    "sgd_",
    "lamb_",
    "lamb_moments_",
    "lamb_apply_",
    "lars_",
)


def implementation(name: str, backend: str):
    if backend == "native":
        return getattr(torch.ops.fastdyn, name)
    if backend == "triton":
        import fastdyn.ops.triton as triton_ops  # (registers torch.ops.fastdyn_triton)
        import fastdyn.reference as reference

        return _float64_to_native_or_reference(
            _by_position(getattr(torch.ops.fastdyn_triton, name), triton_ops.ARGUMENTS[name],
                         _WRITTEN[name]),
            getattr(torch.ops.fastdyn, name), getattr(reference, name))
    if backend == "reference":
        import fastdyn.reference as reference

        return _refusing_bad_writes(getattr(reference, name), _WRITTEN[name])
    raise ValueError(f"unknown backend {backend!r}")


def _float64_to_native_or_reference(op, native, reference):
    """The Triton kernels compute in float32: float64 calls (the first list argument holds
    every dtype of a call) go to the compiled kernels where this build has them for the
    device, else to the float64 reference (which reads its scalars on the host)."""

    def run(*args, **kwargs):
        if any(getattr(t, "dtype", None) == torch.float64 for t in args[0]):
            device = args[0][0].device
            built = device.type == "cpu" or (device.type == "cuda" and WITH_CUDA)
            return (native if built else reference)(*args, **kwargs)
        return op(*args, **kwargs)

    return run


def _written(name: str) -> tuple:
    """(position, name) of each argument the op's schema marks as written."""
    schema = getattr(torch.ops.fastdyn, name).default._schema
    return tuple((i, a.name) for i, a in enumerate(schema.arguments)
                 if a.alias_info is not None and a.alias_info.is_write)


# at import: dynamo of torch 2.11 cannot trace a schema read (implementation() runs while
# a compiled step traces)
_WRITTEN = {name: _written(name) for name in OP_NAMES}


def _refuse_bad_writes(args: tuple, kwargs: dict, written: tuple) -> None:
    """The native ops' refusals of what they cannot write (checks.h,
    check_written_are_writable), before anything is written, for the Python backends: in
    grad mode a tensor that requires grad (a torch custom_op runs the Triton op's body with
    grad mode off, where the C++ check cannot see it), and outside inference mode an
    inference tensor (the reference wrote the tensors before it, then failed). Not while
    dynamo traces, which cannot trace torch.is_inference_mode_enabled (no Triton norm
    compiled in grad mode): the compiled graph runs the ops' own checks."""
    if not written or torch.compiler.is_compiling():
        return
    check_grad = torch.is_grad_enabled()
    check_inference = not torch.is_inference_mode_enabled()
    for i, name in written:
        value = args[i] if i < len(args) else kwargs.get(name)
        for j, t in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if not isinstance(t, torch.Tensor):
                continue
            where = f"{name}[{j}]" if isinstance(value, (list, tuple)) else name
            if check_grad and t.requires_grad:
                raise RuntimeError(f"{where} requires grad and the op writes it in place, which "
                                   "has no derivative: call it under torch.no_grad(), as "
                                   "optimizer steps and clip_grad_norm_ are")
            if check_inference and t.is_inference():
                raise RuntimeError(f"{where} is an inference tensor (made under "
                                   "torch.inference_mode): it cannot be updated in place "
                                   "outside that mode; clone it first")


def _refusing_bad_writes(op, written: tuple):
    @functools.wraps(op)  # (__wrapped__: the reference function itself)
    def run(*args, **kwargs):
        _refuse_bad_writes(args, kwargs, written)
        return op(*args, **kwargs)

    return run


def _by_position(op, arguments: tuple, written: tuple):
    """The Triton ops take every argument by position (see fastdyn/ops/triton/__init__.py:
    torch 2.11 loses mutated arguments passed by keyword or left at their default); this
    fills the trailing ones from keywords or the defaults in `arguments` ((name, default)
    pairs; None where the schema has none)."""
    n_arguments = len(arguments)

    def run(*args, **kwargs):
        if len(args) < n_arguments:
            args = (*args, *(kwargs.get(name, default) for name, default in arguments[len(args):]))
        if torch.is_grad_enabled():  # (optimizer steps run without: no cost there; the C++
            _refuse_bad_writes(args, {}, written)  # checks refuse inference tensors)
        return op(*args)

    return run


@torch.compiler.assume_constant_result
def _backend_name(device_type: str, device_index: int) -> str:
    # Evaluated once at trace time under torch.compile: the backend is part of the graph.
    device = torch.device(device_type, device_index if device_index >= 0 else None)
    backend = backend_for(device)
    if backend == "triton":
        check_triton_runs_on(device)
    return backend


def for_device(name: str, device: torch.device):
    """The implementation of op `name` for tensors on `device` under the current backend."""
    backend = _backend_name(device.type, -1 if device.index is None else device.index)
    return implementation(name, backend)


def call(name: str, device: torch.device, explain, *args, **kwargs):
    """Runs op `name` on `device`. When the dispatcher finds no kernel (a sparse tensor, a
    device without kernels) or the schema refuses an argument (None in a tensor list, a
    float for a tensor: a RuntimeError), `explain()` runs the Python checks, which raise
    the TypeError/ValueError that names the argument."""
    try:
        return for_device(name, device)(*args, **kwargs)
    except (NotImplementedError, RuntimeError):
        explain()
        raise
