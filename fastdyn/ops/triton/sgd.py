"""Triton SGD (mirrors csrc/cuda/sgd.cu) and the momentum kernel LARS shares."""

import torch
import triton
import triton.language as tl

from fastdyn.ops.triton._multi_tensor import (BLOCK, CHUNK, LAUNCH, as_float32, chunk_table,
                                              held_after, inverse_grad_scale, load_param,
                                              segment_sum,
                                              step_is_skipped, tl_dtype, to_dtype,
                                              write_stats)


@triton.jit
def _momentum_update_kernel(rows_ptr, lr_ptr, scale_ptr, found_inf_ptr, ratio_ptr, partials_ptr,
                            momentum_ptr, dampening, weight_decay_ptr,
                            N_COLS: tl.constexpr, P_DT: tl.constexpr, S_DT: tl.constexpr,
                            HAS_MASTER: tl.constexpr, HAS_BUF: tl.constexpr, NESTEROV: tl.constexpr,
                            MAXIMIZE: tl.constexpr, FIRST_STEP: tl.constexpr, LARS: tl.constexpr,
                            ADAPT: tl.constexpr, HAS_SCALE: tl.constexpr,
                            HAS_FOUND_INF: tl.constexpr, STATS: tl.constexpr,
                            CHUNK_: tl.constexpr, BLOCK_: tl.constexpr):
    """SGD's update (LARS=False) or LARS's (LARS=True: d = (g + wd p) r when ADAPT, else g)."""
    pid = tl.program_id(0)
    if not step_is_skipped(found_inf_ptr, HAS_FOUND_INF):
        row = rows_ptr + pid * N_COLS
        p_ptr = tl.load(row).to(tl.pointer_type(P_DT))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(P_DT))
        buf_ptr = tl.load(row + 2).to(tl.pointer_type(S_DT))
        master_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32))
        off = tl.load(row + 4)
        length = tl.load(row + 5)
        t = tl.load(row + 6)
        lr = tl.load(lr_ptr)
        momentum = 0.0
        if HAS_BUF:
            momentum = tl.load(momentum_ptr)
        weight_decay = tl.load(weight_decay_ptr)
        r = 1.0
        if ADAPT:
            r = tl.load(ratio_ptr + t)
        inv = inverse_grad_scale(scale_ptr, HAS_SCALE)
        offs = tl.arange(0, BLOCK_)
        g2 = tl.zeros([BLOCK_], dtype=tl.float32)
        p2 = tl.zeros([BLOCK_], dtype=tl.float32)
        d2 = tl.zeros([BLOCK_], dtype=tl.float32)
        for start in range(0, CHUNK_, BLOCK_):
            idx = off + start + offs
            mask = start + offs < length
            p = load_param(p_ptr, master_ptr, idx, mask, HAS_MASTER)
            # (masked lanes: 0 * an inf inverse scale is NaN, which the sums took)
            g = tl.where(mask, tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32) * inv, 0.0)
            if LARS:
                if ADAPT:
                    d = g
                    if weight_decay != 0.0:  # (0 * an inf p is NaN)
                        d = d + weight_decay * p
                    d = d * r
                else:
                    d = g
            else:
                d = g
                if MAXIMIZE:
                    d = -g
                if weight_decay != 0.0:
                    d = d + weight_decay * p
            if HAS_BUF:
                if FIRST_STEP:
                    buf = d
                else:
                    buf = momentum * tl.load(buf_ptr + idx, mask=mask, other=0.0).to(tl.float32) \
                        + (1.0 - dampening) * d
                tl.store(buf_ptr + idx, to_dtype(buf, S_DT), mask=mask)
                if NESTEROV:
                    d = d + momentum * buf
                else:
                    d = buf
            new = p - lr * d
            if HAS_MASTER:
                tl.store(master_ptr + idx, new, mask=mask)
            tl.store(p_ptr + idx, to_dtype(new, P_DT), mask=mask)
            if STATS:
                g2 = tl.fma(g, g, g2)
                p2 = tl.fma(p, p, p2)
                change = held_after(new, P_DT, HAS_MASTER) - p
                d2 = tl.where(mask, tl.fma(change, change, d2), d2)  # (masked lanes: 0 - inf * 0 is NaN)
        if STATS:
            tl.store(partials_ptr + pid * 3, tl.sum(g2, axis=0))
            tl.store(partials_ptr + pid * 3 + 1, tl.sum(p2, axis=0))
            tl.store(partials_ptr + pid * 3 + 2, tl.sum(d2, axis=0))


def momentum_update(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                    weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf, stats,
                    lars=False, ratios=None):
    device = params[0].device
    has_buf = len(momentum_buffers) > 0  # none: no momentum
    table = chunk_table([params, grads, momentum_buffers, master_params], device)
    partials = torch.zeros((max(table.n_chunks, 1), 3), dtype=torch.float32, device=device)
    found_inf = as_float32(found_inf)
    if table.n_chunks:
        lr32 = as_float32(lr)
        sdt = momentum_buffers[0].dtype if has_buf else params[0].dtype
        _momentum_update_kernel[(table.n_chunks,)](
            table.rows, lr32, as_float32(grad_scale) if grad_scale is not None else lr32,
            found_inf if found_inf is not None else lr32, ratios if ratios is not None else lr32,
            partials, as_float32(momentum) if has_buf else lr32, float(dampening),
            as_float32(weight_decay),
            N_COLS=table.n_cols, P_DT=tl_dtype(params[0].dtype), S_DT=tl_dtype(sdt),
            HAS_MASTER=len(master_params) > 0, HAS_BUF=has_buf, NESTEROV=bool(nesterov),
            MAXIMIZE=bool(maximize), FIRST_STEP=bool(is_first_step), LARS=lars,
            ADAPT=ratios is not None, HAS_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None, STATS=stats is not None, CHUNK_=CHUNK,
            BLOCK_=BLOCK, **LAUNCH)
    if stats is not None:
        n = len(params)
        write_stats(stats, found_inf, segment_sum(partials, table, n, 0),
                    segment_sum(partials, table, n, 1), segment_sum(partials, table, n, 2).sqrt(),
                    ratios if ratios is not None else torch.ones(n, device=device))


def sgd_(params, grads, momentum_buffers, master_params, lr, momentum, dampening, weight_decay,
         nesterov, maximize, is_first_step, grad_scale=None, found_inf=None, stats=None):
    if not params:
        return
    momentum_update(params, grads, momentum_buffers, master_params, lr, momentum, dampening,
                    weight_decay, nesterov, maximize, is_first_step, grad_scale, found_inf, stats)
