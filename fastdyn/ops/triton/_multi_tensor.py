"""Triton multi-tensor plumbing: a chunk table (one row per chunk of CHUNK elements: the
address of the chunk's tensor in every list, its element offset and length, the tensor's
index) lets one launch process a whole list of tensors. Tables are cached by the tensors'
addresses and sizes, so a training loop builds them once; a kernel turns an address back
into a typed pointer with `.to(tl.pointer_type(...))`.

Per-chunk partial sums go to a [n_chunks, k] buffer and are combined per tensor by
`segment_sum`, one program per tensor walking its chunks in order: deterministic, no atomics.

Divisions and square roots are written `tl.div_rn` / `tl.sqrt_rn` (IEEE, as nvcc's default for
the CUDA kernels): Triton's `/` and `tl.sqrt` compile to div.full.f32 (2 ulp) and
sqrt.approx.ftz.f32 (seen in the sm_90 PTX), which put the backends a few ulp apart.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl

CHUNK = 8192  # elements per program
BLOCK = 1024  # elements per vector operation inside a program
# Launch options of the kernels that compute: no multiply-add fused but those written (tl.fma,
# the sums of squares), as in the C++ kernels (math::fmadd). A compiler's own fusing may
# differ between a kernel and its track_stats twin: GCC's did on the CPU, 1 ulp apart.
LAUNCH = dict(enable_fp_fusion=False)

# float64 is left to the native and reference backends: Triton's math here is fp32.
TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tl_dtype(dtype: torch.dtype):
    if dtype not in TL_DTYPES:
        raise TypeError(f"the Triton backend does not handle dtype {dtype} "
                        "(float32, float16, bfloat16); use the native backend")
    return TL_DTYPES[dtype]


class ChunkTable(NamedTuple):
    rows: torch.Tensor         # int64 [n_chunks, n_lists + 3]
    chunk_begin: torch.Tensor  # int64 [n_tensors + 1]: chunks of tensor i are rows [begin[i], begin[i+1])
    n_chunks: int
    n_cols: int
    max_tensor_chunks: int     # chunks of the largest tensor
    stream: int                # the raw CUDA stream it was allocated on (0 off CUDA)


# Tables by (device, addresses, sizes), least recently used first, evicted past a byte
# budget rather than a count: an optimizer with many param groups uses two or three tables
# per bucket a step, and a count of 64 made 30+ buckets rebuild (and copy) every table.
# The budget grows to four tables as large as the largest built: past ~5B elements a device
# one step's tables outgrow 64 MB, and each step would rebuild ~650k rows in Python.
_tables: "OrderedDict[tuple, ChunkTable]" = OrderedDict()
_table_bytes = 0
_largest_table = 0
_MAX_TABLE_BYTES = 64 << 20
# Tables a CUDA graph was captured with: a replay reads them, so they are never evicted.
_captured: dict = {}
# Tables built while capturing, with their pinned host copies: the graph's replay fills
# them, so only that graph may use them (they are not looked up again), and it keeps them.
_graph_owned: list = []


def _raw_stream(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return torch._C._cuda_getCurrentRawStream(
        device.index if device.index is not None else torch.cuda.current_device())


def _used_here(table: ChunkTable, device: torch.device) -> ChunkTable:
    """A cached table read on a stream other than its allocation stream is recorded on it:
    once evicted, the allocator would otherwise hand its memory out again on the allocation
    stream while a kernel on this one may still read it."""
    stream = _raw_stream(device)
    if stream != table.stream:
        current = torch.cuda.current_stream(device)
        table.rows.record_stream(current)
        table.chunk_begin.record_stream(current)
    return table


def capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def copy_for_graph(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """host on `device`, copied while a CUDA graph is captured: from pinned memory (pageable
    copies are refused while capturing) that the graph keeps, as its replays copy it again."""
    host = host.pin_memory()
    out = host.to(device, non_blocking=True)
    _graph_owned.append((out, host))
    return out


def _nbytes(table: ChunkTable) -> int:
    return table.rows.numel() * 8 + table.chunk_begin.numel() * 8


def chunk_table(lists, device: torch.device) -> ChunkTable:
    """Table of `lists` (equal-length lists of tensors, list 0 sets the sizes; an empty list
    gives address 0)."""
    global _table_bytes, _largest_table
    key = (device, tuple(tuple(t.data_ptr() for t in lst) if len(lst) else None for lst in lists),
           tuple(t.numel() for t in lists[0]))
    in_capture = capturing(device)
    hit = _captured.get(key)
    if hit is not None:  # (never evicted: no stream to record)
        return hit
    hit = _tables.get(key)
    if hit is not None:
        if in_capture:
            _tables.pop(key)
            _table_bytes -= _nbytes(hit)
            _captured[key] = hit
            return hit
        _tables.move_to_end(key)
        return _used_here(hit, device)
    table, host = _build_table(lists, device, pinned=in_capture)
    if in_capture:
        _graph_owned.append((table, host))
        return table
    _tables[key] = table
    _table_bytes += _nbytes(table)
    _largest_table = max(_largest_table, _nbytes(table))
    while _table_bytes > max(_MAX_TABLE_BYTES, 4 * _largest_table) and len(_tables) > 1:
        _, old = _tables.popitem(last=False)
        _table_bytes -= _nbytes(old)
    return table


def _build_table(lists, device: torch.device, pinned: bool):
    n = len(lists[0])
    n_cols = len(lists) + 3
    rows = []
    begin = [0]
    for i in range(n):
        numel = lists[0][i].numel()
        addrs = [lst[i].data_ptr() if len(lst) else 0 for lst in lists]
        for off in range(0, numel, CHUNK):
            rows.append(addrs + [off, min(CHUNK, numel - off), i])
        begin.append(len(rows))
    host = (torch.tensor(rows if rows else [[0] * n_cols], dtype=torch.int64),
            torch.tensor(begin, dtype=torch.int64))
    if pinned:
        # a copy captured into a graph must come from pinned memory (pageable is refused
        # while capturing) that outlives the graph: it is copied again at each replay
        host = tuple(h.pin_memory() for h in host)
    # non_blocking: no stream sync (a pageable source is staged before the call returns)
    table = ChunkTable(host[0].to(device, non_blocking=True),
                       host[1].to(device, non_blocking=True),
                       len(rows), n_cols,
                       max((b - a for a, b in zip(begin, begin[1:])), default=0),
                       _raw_stream(device))
    return table, host


# ---- pieces every update kernel starts with (device functions, inlined by Triton)

@triton.jit
def step_is_skipped(found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """found_inf set (a scaler saw inf/NaN): this step does not happen."""
    skip = False
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr) != 0
    return skip


@triton.jit
def inverse_grad_scale(scale_ptr, HAS_SCALE: tl.constexpr):
    inv = 1.0
    if HAS_SCALE:
        inv = tl.div_rn(1.0, tl.load(scale_ptr))
    return inv


# Triton's interpreter (the CPU tests) casts float32 to bfloat16 by truncation, where the
# compiled kernels round to nearest even: a third of the values of a bf16 step came out one
# ulp off the other backends'. Interpreted, the cast rounds in integers (compiled: pruned).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def to_dtype(x, DT: tl.constexpr):
    """float32 x in DT, rounded to nearest even on every Triton target."""
    if _INTERPRETED and DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        rounded = tl.where(x != x, bits | 0x400000, rounded)  # NaN stays a (quiet) NaN
        out = (rounded >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = x.to(DT)
    return out


@triton.jit
def load_param(p_ptr, master_ptr, idx, mask, HAS_MASTER: tl.constexpr):
    """The fp32 value a step starts from: the master copy when there is one."""
    if HAS_MASTER:
        p = tl.load(master_ptr + idx, mask=mask, other=0.0)
    else:
        p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    return p


@triton.jit
def held_after(new, P_DT: tl.constexpr, HAS_MASTER: tl.constexpr):
    """The value a step holds after computing `new`: the fp32 master's, or the param's as
    rounded into P_DT, so that track_stats' ||update|| is the change the step made."""
    if HAS_MASTER:
        held = new
    else:
        held = to_dtype(new, P_DT).to(tl.float32)
    return held


@triton.jit
def _segment_sum_kernel(partials_ptr, begin_ptr, out_ptr, K: tl.constexpr, COL: tl.constexpr,
                        IS_MAX: tl.constexpr, ACC: tl.constexpr, SEG_BLOCK: tl.constexpr,
                        N_BLOCKS: tl.constexpr):
    t = tl.program_id(0)
    start = tl.load(begin_ptr + t)
    end = tl.load(begin_ptr + t + 1)
    offs = tl.arange(0, SEG_BLOCK)
    acc = tl.zeros([SEG_BLOCK], dtype=ACC)
    # A constant trip count (enough for the largest tensor; masked past a tensor's end):
    # Triton 3.6's interpreter cannot take bounds loaded from memory in range().
    for b in range(N_BLOCKS):
        idx = start + b * SEG_BLOCK + offs
        v = tl.load(partials_ptr + idx * K + COL, mask=idx < end, other=0.0)
        if IS_MAX:
            acc = tl.where((acc != acc) | (acc > v), acc, v)
        else:
            acc += v
    if IS_MAX:
        # NaN-propagating max over the lanes
        has_nan = tl.sum((acc != acc).to(tl.int32), axis=0) > 0
        r = tl.max(acc, axis=0)
        r = tl.where(has_nan, float("nan"), r)
    else:
        r = tl.sum(acc, axis=0)
    tl.store(out_ptr + t, r.to(out_ptr.dtype.element_ty))


def segment_sum(partials: torch.Tensor, table: ChunkTable, n_tensors: int, col: int = 0,
                is_max: bool = False, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-tensor combination of column `col` of the chunk partials [n_chunks, k], in the
    partials' dtype, stored as `out_dtype`."""
    out = torch.empty(n_tensors, dtype=out_dtype, device=partials.device)
    if n_tensors == 0:
        return out
    k = partials.shape[1] if partials.dim() == 2 else 1
    seg_block = 128
    # a power of two: few distinct compiled variants however the tensor sizes vary
    n_blocks = triton.next_power_of_2(max(1, triton.cdiv(table.max_tensor_chunks, seg_block)))
    _segment_sum_kernel[(n_tensors,)](partials, table.chunk_begin, out, K=k, COL=col,
                                      IS_MAX=is_max,
                                      ACC=tl.float64 if partials.dtype == torch.float64 else tl.float32,
                                      SEG_BLOCK=seg_block, N_BLOCKS=n_blocks)
    return out


@triton.jit
def _increment_steps_kernel(rows_ptr, found_inf_ptr, N_COLS: tl.constexpr,
                            HAS_FOUND_INF: tl.constexpr, STEP_DTYPE: tl.constexpr):
    pid = tl.program_id(0)
    skip = False
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr) != 0
    if not skip:
        p = tl.load(rows_ptr + pid * N_COLS).to(tl.pointer_type(STEP_DTYPE))
        tl.store(p, tl.load(p) + 1)


def increment_steps(steps: list, found_inf) -> None:
    """steps[i] += 1 for all i, unless found_inf is set: one launch."""
    if not steps:
        return
    table = chunk_table([steps], steps[0].device)
    _increment_steps_kernel[(table.n_chunks,)](
        table.rows, found_inf if found_inf is not None else table.rows, N_COLS=table.n_cols,
        HAS_FOUND_INF=found_inf is not None,
        STEP_DTYPE=tl.float64 if steps[0].dtype == torch.float64 else tl.float32)


def as_float32(t):
    """A float32 one-element device scalar (kernels read scalars as float32)."""
    if t is None:
        return None
    return t if t.dtype == torch.float32 else t.float()


def write_stats(stats, found_inf, grad_sq, param_sq, update_norm, ratio) -> None:
    """stats[:] = (||g||, ||p||, ||update||, r), left untouched when the step was skipped."""
    new = torch.stack([grad_sq.sqrt(), param_sq.sqrt(), update_norm, ratio], dim=1)
    if found_inf is not None:
        new = torch.where(found_inf.reshape(()) != 0, stats, new)
    stats.copy_(new)


def bias_corrections(steps: list, beta1: float, beta2: float):
    """(1 - beta1^step, 1 - beta2^step) of every tensor, computed in float64 on the device
    from one stack of the step counters, as float32 [n] each."""
    try:
        # 0-d counters (torch's and fastdyn's) stack as they are: a reshape of each first
        # cost 3 us a param, 6.5 ms of an AdamW step on 2,000 params
        t = torch.stack(steps).reshape(-1).double()
    except RuntimeError:  # counters of mixed shapes, () and (1,)
        t = torch.stack([s.reshape(()) for s in steps]).double()
    # beta2 a Python float, beta1 a tensor on the device: no host-to-device copy (that would sync)
    return tuple((1.0 - torch.pow(_base(beta), t)).float() for beta in (beta1, beta2))


def _base(beta):
    return beta.reshape(()).double() if isinstance(beta, torch.Tensor) else float(beta)


def beta1_terms(beta1: torch.Tensor, grad_coef: bool = True) -> torch.Tensor:
    """[beta1, 1 - beta1] as float32 on beta1's device, 1 - beta1 computed in float64 and
    rounded once (as csrc/include/fastdyn/math/adam.h), for the kernels to load: beta1 is a
    tensor a scheduler changes between steps. grad_coef=False (LAMB without grad_averaging):
    [beta1, 1]."""
    b = beta1.reshape(()).double()
    return torch.stack([b, 1.0 - b if grad_coef else torch.ones_like(b)]).float()
