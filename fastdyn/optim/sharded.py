"""LAMB and LARS steps on the local shards of sharded DTensor parameters (FSDP2).

Their trust ratios need ||p||, ||u|| (LAMB) or ||p||, ||g|| (LARS) of whole tensors, and a
rank holds a shard of each. So the step runs the fused kernels on the local shards in two
parts with one all-reduce between them: the per-tensor sums of squares of the first pass
(LAMB: lamb_moments_; LARS: the per-tensor norm op) are summed over the shards, the ratios
are taken from them on the device, and the second pass (lamb_apply_; lars_ given the
ratios) applies them. The same bytes move as in the one-op step, plus the all-reduce of
3 (LAMB) or 2 (LARS) numbers per tensor.
"""

from __future__ import annotations

import torch

import fastdyn.ops as ops
from fastdyn import distributed
from fastdyn.ops.trust_ratio import adapting, lamb_trust_ratios, lars_trust_ratios


def lamb_(b, grads, lr, beta1, weight_decay, grad_scale, found_inf, stats) -> None:
    g = b.group
    beta2 = float(g["betas"][1])
    eps = float(g["eps"])
    exp_avgs, exp_avg_sqs = b.state["exp_avg"], b.state["exp_avg_sq"]
    sums = ops.lamb_moments_(b.params, grads, exp_avgs, exp_avg_sqs, b.master_params, b.steps,
                             beta1, beta2, eps, weight_decay, bool(g["bias_correction"]),
                             bool(g["grad_averaging"]), grad_scale, found_inf)
    grad_norm, param_norm, u_norm = b.spec.all_reduce_(sums.contiguous()).sqrt_().unbind(1)
    ratios = lamb_trust_ratios(param_norm, u_norm, adapting(g["weight_decay"], g["always_adapt"]),
                               g["trust_clip"])
    ops.lamb_apply_(b.params, exp_avgs, exp_avg_sqs, b.master_params, b.steps, lr, ratios, beta1,
                    beta2, eps, weight_decay, bool(g["bias_correction"]), found_inf)
    if stats is not None:
        update_norm = lr.to(ratios.dtype) * ratios * u_norm
        new = torch.stack([grad_norm, param_norm, update_norm, ratios], dim=1)
        if found_inf is not None:  # skipped: the NaN rows stay (NaN sums gave a ratio of 1)
            new = torch.where(found_inf.reshape(()) != 0, stats, new)
        stats.copy_(new)


def lars_(b, grads, lr, momentum, weight_decay, grad_scale, found_inf, stats) -> None:
    """(A step known not to adapt runs as SGD, on the local shards: LARS's _run_bucket.) The
    op decides on the device whether the ratios apply (weight_decay a tensor)."""
    g = b.group
    param_norm = ops.multi_tensor_l2norm(b.master_params or b.params, per_tensor=True)[1]
    # the scaled grads measured unscaled, their squares in float64, as lars_ does: squared in
    # float32, a scale of 2^76 made a gradient of 0.1 an inf square
    inv = None if grad_scale is None else grad_scale.double().reciprocal()
    grad_norm = ops.multi_tensor_l2norm(grads, per_tensor=True, inv_scale=inv)[1]
    # (combined in float64: an unscaled norm under ~4e-23 squares to 0 in float32, r = 1)
    param_norm, grad_norm = distributed.sharded_norms(
        torch.stack([param_norm, grad_norm]).double(), b.spec)
    ratios = lars_trust_ratios(param_norm, grad_norm, float(g["trust_coeff"]), weight_decay,
                               float(g["eps"]), lr, bool(g["trust_clip"]))
    ops.lars_(b.params, grads, b.state.get("momentum_buffer", []), b.master_params, lr,
              momentum, float(g["dampening"]), weight_decay, bool(g["nesterov"]),
              float(g["trust_coeff"]), float(g["eps"]), bool(g["trust_clip"]),
              bool(g["always_adapt"]), b.first_step, grad_scale=grad_scale, found_inf=found_inf,
              stats=stats, trust_ratios=ratios)
    if stats is not None:  # the op's norms are of the local shards
        stats[:, :3] = distributed.sharded_norms(stats[:, :3], b.spec)
