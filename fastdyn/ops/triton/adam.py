"""Triton Adam/AdamW (mirrors csrc/cuda/adam.cu; math of csrc/include/fastdyn/math/adam.h)."""

import torch
import triton
import triton.language as tl

from fastdyn.ops.triton._multi_tensor import (BLOCK, CHUNK, LAUNCH, as_float32, beta1_terms,
                                              bias_corrections,
                                              chunk_table, held_after, increment_steps,
                                              inverse_grad_scale, load_param, segment_sum,
                                              step_is_skipped, tl_dtype, to_dtype,
                                              write_stats)


@triton.jit
def _adam_kernel(rows_ptr, lr_ptr, scale_ptr, found_inf_ptr, bc1_ptr, bc2_ptr, partials_ptr,
                 beta1_ptr, beta2, one_minus_beta2, eps, weight_decay_ptr,
                 N_COLS: tl.constexpr, P_DT: tl.constexpr, S_DT: tl.constexpr,
                 HAS_MASTER: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                 DECOUPLED: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                 STATS: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_: tl.constexpr):
    pid = tl.program_id(0)
    if not step_is_skipped(found_inf_ptr, HAS_FOUND_INF):
        row = rows_ptr + pid * N_COLS
        p_ptr = tl.load(row).to(tl.pointer_type(P_DT))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(P_DT))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(S_DT))
        v_ptr = tl.load(row + 3).to(tl.pointer_type(S_DT))
        vmax_ptr = tl.load(row + 4).to(tl.pointer_type(S_DT))
        master_ptr = tl.load(row + 5).to(tl.pointer_type(tl.float32))
        off = tl.load(row + 6)
        length = tl.load(row + 7)
        t = tl.load(row + 8)
        lr = tl.load(lr_ptr)
        beta1 = tl.load(beta1_ptr)
        one_minus_beta1 = tl.load(beta1_ptr + 1)
        weight_decay = tl.load(weight_decay_ptr)
        step_size = tl.div_rn(lr, tl.load(bc1_ptr + t))
        bc2_sqrt = tl.sqrt_rn(tl.load(bc2_ptr + t))
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
            g_seen = tl.where(mask, tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32) * inv, 0.0)
            g = g_seen
            if MAXIMIZE:
                g = -g
            p_old = p
            if weight_decay != 0.0:
                if DECOUPLED:
                    p = p * (1.0 - lr * weight_decay)
                else:
                    g = g + weight_decay * p
            m = beta1 * tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32) + one_minus_beta1 * g
            v = beta2 * tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32) + one_minus_beta2 * g * g
            second = v
            if AMSGRAD:
                vm = tl.load(vmax_ptr + idx, mask=mask, other=0.0).to(tl.float32)
                vm = tl.where((vm != vm) | (vm > v), vm, v)
                tl.store(vmax_ptr + idx, to_dtype(vm, S_DT), mask=mask)
                second = vm
            p = p - tl.div_rn(step_size * m, tl.div_rn(tl.sqrt_rn(second), bc2_sqrt) + eps)
            if HAS_MASTER:
                tl.store(master_ptr + idx, p, mask=mask)
            tl.store(p_ptr + idx, to_dtype(p, P_DT), mask=mask)
            tl.store(m_ptr + idx, to_dtype(m, S_DT), mask=mask)
            tl.store(v_ptr + idx, to_dtype(v, S_DT), mask=mask)
            if STATS:
                g2 = tl.fma(g_seen, g_seen, g2)
                p2 = tl.fma(p_old, p_old, p2)
                # masked lanes: 0 / (0 + eps) is NaN at eps=0
                change = held_after(p, P_DT, HAS_MASTER) - p_old
                d2 = tl.where(mask, tl.fma(change, change, d2), d2)
        if STATS:
            tl.store(partials_ptr + pid * 3, tl.sum(g2, axis=0))
            tl.store(partials_ptr + pid * 3 + 1, tl.sum(p2, axis=0))
            tl.store(partials_ptr + pid * 3 + 2, tl.sum(d2, axis=0))


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
          beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
          grad_scale=None, found_inf=None, stats=None):
    if not params:
        return
    device = params[0].device
    found_inf = as_float32(found_inf)
    increment_steps(state_steps, found_inf)
    table = chunk_table([params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [],
                         master_params], device)
    bc1, bc2 = bias_corrections(state_steps, beta1, beta2)
    partials = torch.zeros((max(table.n_chunks, 1), 3), dtype=torch.float32, device=device)
    if table.n_chunks:
        lr32 = as_float32(lr)
        _adam_kernel[(table.n_chunks,)](
            table.rows, lr32, as_float32(grad_scale) if grad_scale is not None else lr32,
            found_inf if found_inf is not None else lr32, bc1, bc2, partials, beta1_terms(beta1),
            # 1 - beta in double, rounded once (as csrc/include/fastdyn/math/adam.h)
            float(beta2), 1.0 - beta2, float(eps), as_float32(weight_decay),
            N_COLS=table.n_cols, P_DT=tl_dtype(params[0].dtype), S_DT=tl_dtype(exp_avgs[0].dtype),
            HAS_MASTER=len(master_params) > 0, AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize),
            DECOUPLED=bool(decoupled_weight_decay), HAS_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None, STATS=stats is not None, CHUNK_=CHUNK,
            BLOCK_=BLOCK, **LAUNCH)
    if stats is not None:
        n = len(params)
        write_stats(stats, found_inf, segment_sum(partials, table, n, 0),
                    segment_sum(partials, table, n, 1), segment_sum(partials, table, n, 2).sqrt(),
                    torch.ones(n, device=device))
