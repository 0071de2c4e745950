"""Builds the arguments of a fused optimizer op for tests: params, grads and state of given
sizes/dtype, and runs an op on one copy and the float64 reference on another."""

from __future__ import annotations

import copy

import torch

from fastdyn import reference
from fastdyn.ops import use_backend
from fastdyn.ops.registry import for_device
from helpers import STORE_TOL


def hyper(value: float, device) -> torch.Tensor:
    """beta1 / momentum as the ops take them: a float64 one-element tensor on their device."""
    return torch.tensor(value, dtype=torch.float64, device=device)


def make_group(sizes, dtype, device, seed=0, master=False, state_fp32=False, steps=True,
               buffers=0, zero_param_index=None, zero_grad_index=None):
    g = torch.Generator().manual_seed(seed)

    def r(n, scale=1.0, positive=False):
        t = torch.randn(n, generator=g, dtype=torch.float64) * scale
        return t.abs() if positive else t

    sdtype = torch.float32 if (master or state_fp32) else dtype
    params = [r(n).to(dtype).to(device) for n in sizes]
    grads = [r(n, 0.1).to(dtype).to(device) for n in sizes]
    if zero_param_index is not None:
        params[zero_param_index].zero_()
    if zero_grad_index is not None:
        grads[zero_grad_index].zero_()
    out = {
        "params": params,
        "grads": grads,
        "master_params": [p.float().clone() for p in params] if master else [],
    }
    for i in range(buffers):
        out[f"state{i}"] = [r(n, 0.01, positive=(i == 1)).to(sdtype).to(device) for n in sizes]
    if steps:
        out["state_steps"] = [torch.tensor(float(3 + k % 3), device=device) for k in range(len(sizes))]
    return out


def clone_group(group):
    return {k: [t.clone() for t in v] for k, v in group.items()}


def run_both(op_name, backend, device, build_args, group):
    """Runs `op_name` on `backend` and the reference on a copy; returns (ours, ref) groups."""
    ours, ref = clone_group(group), clone_group(group)
    args, kwargs = build_args(ours)
    with use_backend(backend):
        for_device(op_name, torch.device(device))(*args, **kwargs)
    rargs, rkwargs = build_args(ref)
    getattr(reference, op_name)(*rargs, **rkwargs)
    return ours, ref


# fp32 arithmetic error of an update, relative to the largest change in the tensor: the
# kernels compute in fp32 and the reference in fp64, and cancellations (m = b1 m + g with
# b1 m ~ -g) make errors relative to the size of the terms, not of the result.
UPDATE_RTOL = 1e-5


def assert_groups_close(ours, ref, dtype, orig=None):
    """Every tensor of `ours` matches `ref` to the storage tolerance of its dtype plus a
    fraction of the largest change the reference made to it (from `orig`): UPDATE_RTOL for
    fp32 state. With fp16/bf16 state the new moments are rounded from fp32 by the kernels and
    from fp64 by the reference, which differ by one unit where the two straddle a rounding
    boundary; LAMB computes u from those stored moments, so one unit of the state dtype
    (half of STORE_TOL, which is two) carries into the update."""
    state_dtypes = [t.dtype for k, v in ours.items() if k.startswith("state") and k != "state_steps"
                    for t in v[:1]]
    state_dtype = state_dtypes[0] if state_dtypes else torch.float32
    update_rtol = max(UPDATE_RTOL, 0.5 * STORE_TOL[state_dtype][0])
    for key in ours:
        for i, (a, b) in enumerate(zip(ours[key], ref[key])):
            rtol, atol = STORE_TOL[b.dtype]
            a64, b64 = a.double().cpu(), b.double().cpu()
            if orig is not None and b.numel():
                change = (b64 - orig[key][i].double().cpu()).abs().max().item()
                atol = atol + update_rtol * change
            torch.testing.assert_close(a64, b64, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{key}[{i}]: {m}")
