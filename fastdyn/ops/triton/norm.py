"""Triton multi_tensor_norm, multi_tensor_unscale_norm_ and the scaling kernel (mirrors
csrc/cuda/{norm,unscale,scale}.cu)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastdyn.ops.triton._multi_tensor import (BLOCK, CHUNK, LAUNCH, capturing, chunk_table, copy_for_graph,
                                              segment_sum, tl_dtype, to_dtype)


@triton.jit
def _norm_chunks_kernel(rows_ptr, partials_ptr, inv_scale_ptr, found_inf_ptr,
                        N_COLS: tl.constexpr, ELEM: tl.constexpr, IS_MAX: tl.constexpr,
                        UNSCALE: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_: tl.constexpr,
                        SQUARE_F64: tl.constexpr = False):
    pid = tl.program_id(0)
    row = rows_ptr + pid * N_COLS
    x_ptr = tl.load(row).to(tl.pointer_type(ELEM))
    off = tl.load(row + 1)
    length = tl.load(row + 2)
    offs = tl.arange(0, BLOCK_)
    acc = tl.zeros([BLOCK_], dtype=tl.float64 if SQUARE_F64 else tl.float32)
    bad = tl.zeros([BLOCK_], dtype=tl.int32)
    inv = 1.0
    if UNSCALE:
        inv = tl.load(inv_scale_ptr)
    for start in range(0, CHUNK_, BLOCK_):
        idx = start + offs
        mask = idx < length
        x = tl.load(x_ptr + off + idx, mask=mask, other=0.0).to(tl.float32)
        if UNSCALE:
            bad = bad | ((x - x) != (x - x)).to(tl.int32)
            out = to_dtype(x * inv, ELEM)
            tl.store(x_ptr + off + idx, out, mask=mask)
            # (masked lanes: 0 * an inf inverse scale is NaN, which the norm took)
            x = tl.where(mask, out.to(tl.float32), 0.0)
        if IS_MAX:
            a = tl.abs(x)
            acc = tl.where((acc != acc) | (acc > a), acc, a)
        elif SQUARE_F64:
            xd = x.to(tl.float64)
            acc = tl.fma(xd, xd, acc)
        else:
            acc = tl.fma(x, x, acc)
    if IS_MAX:
        has_nan = tl.sum((acc != acc).to(tl.int32), axis=0) > 0
        r = tl.where(has_nan, float("nan"), tl.max(acc, axis=0)).to(tl.float64)
    else:
        # the lanes (8 squares each) combine in float64, as the partials after them: a
        # float32 combination made 65536 x 1e17 an inf norm (the CPU gives 2.6e19)
        r = tl.sum(acc.to(tl.float64), axis=0)
    tl.store(partials_ptr + pid, r)
    if UNSCALE:
        if tl.max(bad, axis=0) > 0:
            tl.store(found_inf_ptr, 1.0)


def per_tensor_partials(tensors, is_max: bool, inv_scale=None, found_inf=None,
                        out_dtype: torch.dtype = torch.float32,
                        square_in_float64: bool = False) -> torch.Tensor:
    """Sum of squares (or max |x|) of every tensor, [n] in `out_dtype` (combined in
    float64); unscales in place first when inv_scale is given. `square_in_float64` squares
    and sums every element in float64 (values whose squares pass float32's range)."""
    device = tensors[0].device
    by_dtype: dict = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    parts = []
    for dtype, idx in by_dtype.items():
        sub = [tensors[i] for i in idx]
        table = chunk_table([sub], device)
        partials = torch.zeros(max(table.n_chunks, 1), dtype=torch.float64, device=device)
        if table.n_chunks:
            _norm_chunks_kernel[(table.n_chunks,)](
                table.rows, partials, inv_scale if inv_scale is not None else partials,
                found_inf if found_inf is not None else partials, N_COLS=table.n_cols,
                ELEM=tl_dtype(dtype), IS_MAX=is_max, UNSCALE=inv_scale is not None,
                CHUNK_=CHUNK, BLOCK_=BLOCK, SQUARE_F64=square_in_float64, **LAUNCH)
        parts.append(segment_sum(partials, table, len(sub), is_max=is_max, out_dtype=out_dtype))
    if len(parts) == 1:
        return parts[0]
    # mixed dtypes: put each group's results back in list order (the order is built on the
    # host, and so is this permutation; it goes to the device once per distinct order)
    order = [i for idx in by_dtype.values() for i in idx]
    out = torch.empty(len(tensors), dtype=out_dtype, device=device)
    out[_device_order(tuple(order), device)] = torch.cat(parts)
    return out


_ORDERS = {}


def _device_order(order: tuple, device: torch.device) -> torch.Tensor:
    # one H2D copy per distinct order, not per call: a copy per call stalls and cannot be
    # captured in a CUDA graph (a step's lists keep their order, so this stays small)
    key = (device, order)
    hit = _ORDERS.get(key)
    if hit is not None:
        return hit
    if capturing(device):  # first seen while capturing: the graph's own (as a chunk table)
        return copy_for_graph(torch.tensor(order, dtype=torch.int64), device)
    _ORDERS[key] = torch.tensor(order, device=device)
    return _ORDERS[key]


def norms(tensors, is_max: bool, inv_scale=None, found_inf=None):
    """(total, per-tensor norms), float32; unscales in place first when inv_scale is given.
    Sums of squares come back in float64 and their square roots are rounded once, by
    writing them to float32; maxima are exact in float32."""
    per = per_tensor_partials(tensors, is_max, inv_scale, found_inf,
                              out_dtype=torch.float32 if is_max else torch.float64)
    if is_max:
        total = per.max() if per.numel() else per.new_zeros(())
        if per.numel():
            # masked_fill with a device mask: new_tensor(nan) would be a blocking H2D copy
            total = total.masked_fill(per.isnan().any(), float("nan"))
        return total, per
    total = per.new_empty((), dtype=torch.float32)
    roots = per.new_empty(per.shape, dtype=torch.float32)
    return torch.sqrt(per.sum(), out=total), torch.sqrt(per, out=roots)


def multi_tensor_norm(tensors, ord: float, per_tensor: bool, inv_scale=None):
    is_max = math.isinf(ord)
    if inv_scale is None:
        total, per = norms(tensors, is_max)
    else:
        total, per = scaled_norms(tensors, is_max, inv_scale)
    return total, (per if per_tensor else per.new_zeros(0))


def scaled_norms(tensors, is_max: bool, inv_scale):
    """norms() of the tensors times inv_scale (None: 1), nothing written: the squares in
    float64 (csrc/cpu/lane_sums.h, sum_squares_double), the partials scaled in float64, each
    root rounded once to float32."""
    factor = 1.0 if inv_scale is None else inv_scale.reshape(()).double().abs()
    if is_max:
        per = per_tensor_partials(tensors, True).double() * factor
        total = per.max().masked_fill(per.isnan().any(), float("nan"))
        return total.float(), per.float()
    per = per_tensor_partials(tensors, False, out_dtype=torch.float64,
                              square_in_float64=True) * (factor * factor)
    return per.sum().sqrt().float(), per.sqrt().float()


def multi_tensor_unscale_norm_(tensors, inv_scale, found_inf, ord: float, per_tensor: bool):
    is_max = math.isinf(ord)
    if not tensors:  # reached through inv_scale and found_inf alone: zeros on their device
        return found_inf.new_zeros(()), found_inf.new_zeros(0)
    inv = inv_scale.float().reshape(1)
    total, per = norms(tensors, is_max, inv, found_inf)
    return total, (per if per_tensor else per.new_zeros(0))


@triton.jit
def _scale_kernel(rows_ptr, scale_ptr, N_COLS: tl.constexpr, ELEM: tl.constexpr,
                  CHUNK_: tl.constexpr, BLOCK_: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.load(scale_ptr)
    # scale == 1 changes no bit: the program reads nothing more
    if s != 1.0:
        row = rows_ptr + pid * N_COLS
        x_ptr = tl.load(row).to(tl.pointer_type(ELEM))
        off = tl.load(row + 1)
        length = tl.load(row + 2)
        offs = tl.arange(0, BLOCK_)
        for start in range(0, CHUNK_, BLOCK_):
            idx = start + offs
            mask = idx < length
            x = tl.load(x_ptr + off + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(x_ptr + off + idx, to_dtype(x * s, ELEM), mask=mask)


def scale_(tensors, scale) -> None:
    s = scale.float().reshape(1)
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype, sub in by_dtype.items():
        table = chunk_table([sub], sub[0].device)
        if table.n_chunks:
            _scale_kernel[(table.n_chunks,)](table.rows, s, N_COLS=table.n_cols,
                                             ELEM=tl_dtype(dtype), CHUNK_=CHUNK, BLOCK_=BLOCK)
