"""Triton LAMB (mirrors csrc/cuda/lamb.cu; math of csrc/include/fastdyn/math/lamb.h): the
moment pass with per-chunk ||p||^2, ||u||^2, the trust ratios, the apply pass."""

import torch
import triton
import triton.language as tl

from fastdyn.ops import checks
from fastdyn.ops.triton._multi_tensor import (BLOCK, CHUNK, LAUNCH, as_float32, beta1_terms,
                                              bias_corrections,
                                              chunk_table, held_after, increment_steps,
                                              inverse_grad_scale, load_param, segment_sum,
                                              step_is_skipped, tl_dtype, to_dtype,
                                              write_stats)
from fastdyn.ops.trust_ratio import adapting, lamb_trust_ratios


@triton.jit
def _lamb_direction(p, m, v, bc1, bc2, eps, weight_decay):
    # sqrt(v) / sqrt(bc2), as the native kernels: v / bc2 overflows float32 for |g| past
    # ~1.8e19 where v does not, and u became m / inf = 0 (the element did not move)
    u = tl.div_rn(tl.div_rn(m, bc1), tl.div_rn(tl.sqrt_rn(v), tl.sqrt_rn(bc2)) + eps)
    if weight_decay != 0.0:
        u = u + weight_decay * p
    return u


@triton.jit
def _lamb_moments_kernel(rows_ptr, scale_ptr, found_inf_ptr, bc1_ptr, bc2_ptr, partials_ptr,
                         beta1_ptr, beta2, one_minus_beta2, eps, weight_decay_ptr,
                         N_COLS: tl.constexpr, P_DT: tl.constexpr, S_DT: tl.constexpr,
                         HAS_MASTER: tl.constexpr, HAS_SCALE: tl.constexpr,
                         HAS_FOUND_INF: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_: tl.constexpr):
    pid = tl.program_id(0)
    if not step_is_skipped(found_inf_ptr, HAS_FOUND_INF):
        row = rows_ptr + pid * N_COLS
        p_ptr = tl.load(row).to(tl.pointer_type(P_DT))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(P_DT))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(S_DT))
        v_ptr = tl.load(row + 3).to(tl.pointer_type(S_DT))
        master_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
        off = tl.load(row + 5)
        length = tl.load(row + 6)
        t = tl.load(row + 7)
        bc1 = tl.load(bc1_ptr + t)
        bc2 = tl.load(bc2_ptr + t)
        beta1 = tl.load(beta1_ptr)
        grad_coef = tl.load(beta1_ptr + 1)  # 1 - beta1 with grad_averaging, else 1
        weight_decay = tl.load(weight_decay_ptr)
        inv = inverse_grad_scale(scale_ptr, HAS_SCALE)
        offs = tl.arange(0, BLOCK_)
        g2 = tl.zeros([BLOCK_], dtype=tl.float32)
        p2 = tl.zeros([BLOCK_], dtype=tl.float32)
        u2 = tl.zeros([BLOCK_], dtype=tl.float32)
        for start in range(0, CHUNK_, BLOCK_):
            idx = off + start + offs
            mask = start + offs < length
            p = load_param(p_ptr, master_ptr, idx, mask, HAS_MASTER)
            # (masked lanes: 0 * an inf inverse scale is NaN, which the sums took)
            g = tl.where(mask, tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32) * inv, 0.0)
            m = to_dtype(beta1 * tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32)
                         + grad_coef * g, S_DT)
            v = to_dtype(beta2 * tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32)
                         + one_minus_beta2 * g * g, S_DT)
            tl.store(m_ptr + idx, m, mask=mask)
            tl.store(v_ptr + idx, v, mask=mask)
            u = _lamb_direction(p, m.to(tl.float32), v.to(tl.float32), bc1, bc2, eps, weight_decay)
            u = tl.where(mask, u, 0.0)
            g2 = tl.fma(g, g, g2)
            p2 = tl.fma(p, p, p2)
            u2 = tl.fma(u, u, u2)
        tl.store(partials_ptr + pid * 3, tl.sum(g2, axis=0))
        tl.store(partials_ptr + pid * 3 + 1, tl.sum(p2, axis=0))
        tl.store(partials_ptr + pid * 3 + 2, tl.sum(u2, axis=0))


@triton.jit
def _lamb_apply_kernel(rows_ptr, lr_ptr, found_inf_ptr, bc1_ptr, bc2_ptr, ratio_ptr, applied_ptr,
                       eps, weight_decay_ptr, N_COLS: tl.constexpr, P_DT: tl.constexpr,
                       S_DT: tl.constexpr, HAS_MASTER: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                       APPLIED: tl.constexpr, CHUNK_: tl.constexpr, BLOCK_: tl.constexpr):
    """APPLIED: per-chunk sums of squares of the stored change into applied_ptr (track_stats
    of 16-bit params without masters, whose rounding drops part of the update)."""
    pid = tl.program_id(0)
    if not step_is_skipped(found_inf_ptr, HAS_FOUND_INF):
        row = rows_ptr + pid * N_COLS
        p_ptr = tl.load(row).to(tl.pointer_type(P_DT))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(S_DT))
        v_ptr = tl.load(row + 3).to(tl.pointer_type(S_DT))
        master_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
        off = tl.load(row + 5)
        length = tl.load(row + 6)
        t = tl.load(row + 7)
        bc1 = tl.load(bc1_ptr + t)
        bc2 = tl.load(bc2_ptr + t)
        step = tl.load(lr_ptr) * tl.load(ratio_ptr + t)
        weight_decay = tl.load(weight_decay_ptr)
        offs = tl.arange(0, BLOCK_)
        change2 = tl.zeros([BLOCK_], dtype=tl.float32)
        for start in range(0, CHUNK_, BLOCK_):
            idx = off + start + offs
            mask = start + offs < length
            p = load_param(p_ptr, master_ptr, idx, mask, HAS_MASTER)
            m = tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            new = p - step * _lamb_direction(p, m, v, bc1, bc2, eps, weight_decay)
            if HAS_MASTER:
                tl.store(master_ptr + idx, new, mask=mask)
            tl.store(p_ptr + idx, to_dtype(new, P_DT), mask=mask)
            if APPLIED:
                change = held_after(new, P_DT, HAS_MASTER) - p
                change2 = tl.where(mask, tl.fma(change, change, change2), change2)
        if APPLIED:
            tl.store(applied_ptr + pid, tl.sum(change2, axis=0))


def _group(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
           bias_correction, found_inf):
    """The chunk table, bias corrections and compile-time arguments both kernels share."""
    device = params[0].device
    table = chunk_table([params, grads, exp_avgs, exp_avg_sqs, master_params], device)
    if bias_correction:
        bc1, bc2 = bias_corrections(state_steps, beta1, beta2)
    else:
        bc1 = bc2 = torch.ones(len(params), dtype=torch.float32, device=device)
    common = dict(N_COLS=table.n_cols, P_DT=tl_dtype(params[0].dtype),
                  S_DT=tl_dtype(exp_avgs[0].dtype), HAS_MASTER=len(master_params) > 0,
                  HAS_FOUND_INF=found_inf is not None, CHUNK_=CHUNK, BLOCK_=BLOCK, **LAUNCH)
    return table, bc1, bc2, common


def _moments(table, bc1, bc2, common, grad_scale, found_inf, beta1, beta2, grad_averaging, eps,
             weight_decay):
    """Runs the moment pass; per-chunk (g^2, p^2, u^2)."""
    partials = torch.zeros((max(table.n_chunks, 1), 3), dtype=torch.float32, device=bc1.device)
    if table.n_chunks:
        placeholder = bc1  # any float32 tensor, for pointers the kernel does not read
        _lamb_moments_kernel[(table.n_chunks,)](
            table.rows, as_float32(grad_scale) if grad_scale is not None else placeholder,
            found_inf if found_inf is not None else placeholder, bc1, bc2, partials,
            beta1_terms(beta1, grad_coef=grad_averaging), float(beta2), 1.0 - beta2, float(eps),
            as_float32(weight_decay), HAS_SCALE=grad_scale is not None, **common)
    return partials


def _apply(table, bc1, bc2, common, lr32, found_inf, ratios, eps, weight_decay, applied=None):
    """The apply pass; with `applied` ([n_chunks] partials), the per-chunk sums of squares
    of the stored change."""
    if table.n_chunks:
        _lamb_apply_kernel[(table.n_chunks,)](
            table.rows, lr32, found_inf if found_inf is not None else lr32, bc1, bc2, ratios,
            applied if applied is not None else lr32, float(eps), as_float32(weight_decay),
            APPLIED=applied is not None, **common)


def _step_moments(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1,
                  beta2, eps, weight_decay, bias_correction, grad_averaging, grad_scale, found_inf):
    """Steps advanced and the moment pass run: (group of _group, per-chunk partials)."""
    increment_steps(state_steps, found_inf)
    group = _group(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
                   bias_correction, found_inf)
    return group, _moments(*group, grad_scale, found_inf, beta1, beta2, grad_averaging, eps,
                           weight_decay)


def lamb_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1, beta2, eps,
          weight_decay, bias_correction, grad_averaging, trust_clip, always_adapt,
          grad_scale=None, found_inf=None, stats=None):
    if not params:
        return
    n = len(params)
    found_inf = as_float32(found_inf)
    (table, bc1, bc2, common), partials = _step_moments(
        params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2, eps,
        weight_decay, bias_correction, grad_averaging, grad_scale, found_inf)
    pn = segment_sum(partials, table, n, 1).sqrt()
    un = segment_sum(partials, table, n, 2).sqrt()
    r = lamb_trust_ratios(pn, un, adapting(weight_decay, always_adapt), trust_clip)
    lr32 = as_float32(lr)
    # 16-bit params without masters: ||update|| is the stored change, measured by the apply
    # pass; the others' is lr * r * ||u|| (to the rounding of p)
    applied = None
    if stats is not None and not master_params and params[0].dtype in (torch.float16, torch.bfloat16):
        applied = torch.zeros(partials.shape[0], dtype=torch.float32, device=partials.device)
    _apply(table, bc1, bc2, common, lr32, found_inf, r, eps, weight_decay, applied)
    if stats is not None:
        update_norm = (lr32.reshape(()) * r * un if applied is None
                       else segment_sum(applied, table, n).sqrt())
        write_stats(stats, found_inf, segment_sum(partials, table, n, 0), pn * pn, update_norm, r)


def lamb_moments_(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2,
                  eps, weight_decay, bias_correction, grad_averaging, grad_scale=None,
                  found_inf=None):
    if not params:
        return torch.empty((0, 3), dtype=torch.float64,
                           device=checks.empty_list_device(grad_scale, found_inf))
    n = len(params)
    found_inf = as_float32(found_inf)
    (table, _, _, _), partials = _step_moments(
        params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1, beta2, eps,
        weight_decay, bias_correction, grad_averaging, grad_scale, found_inf)
    sums = torch.stack([segment_sum(partials, table, n, k) for k in range(3)], dim=1).double()
    if found_inf is not None:
        sums = torch.where(found_inf.reshape(()) != 0, float("nan"), sums)
    return sums


def lamb_apply_(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, trust_ratios,
                beta1, beta2, eps, weight_decay, bias_correction, found_inf=None):
    if not params:
        return
    found_inf = as_float32(found_inf)
    # no gradients are read: params stand in for the list
    table, bc1, bc2, common = _group(params, params, exp_avgs, exp_avg_sqs, master_params,
                                     state_steps, beta1, beta2, bias_correction, found_inf)
    _apply(table, bc1, bc2, common, as_float32(lr), found_inf, trust_ratios.float().contiguous(),
           eps, weight_decay)
