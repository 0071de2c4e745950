"""fastdyn.optim.LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning").

The contract (DESIGN.md) step, per parameter tensor p with gradient g, t the step count:
 1. with max_grad_norm: G = global L2 norm of all gradients; g <- g / max(G / max_grad_norm, 1)
 2. m <- b1 m + (1-b1) g (m <- b1 m + g without grad_averaging); v <- b2 v + (1-b2) g^2
 3. u <- (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)  (no divisors without bias_correction)
 4. u <- u + weight_decay p
 5. r = ||p|| / ||u|| when both > 0 else 1 (min(r, 1) with trust_clip), when weight_decay != 0
    or always_adapt; else r = 1
 6. p <- p - lr r u

Memory traffic per fp32 parameter: 4 bytes for the global-norm pass (only with clipping or
LossScaler's inf check), then 24 (read p, g, m, v; write m, v) + 16 (read p, m, v; write
p) = 44 bytes. A single pass (28 bytes) is impossible: ||u|| of the whole tensor must be
known before p moves. Clipping and loss-scale unscaling fold into the second pass's read of
g (g / (grad_scale * max(G/max_grad_norm, 1))), and the inf check into the first.
"""

from __future__ import annotations

import torch

import fastdyn.ops as ops
from fastdyn.optim import sharded
from fastdyn.optim.optimizer import FusedOptimizer, _check_float, floats_of_betas


class LAMB(FusedOptimizer):
    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 bias_correction=True, grad_averaging=True, max_grad_norm=None, trust_clip=False,
                 always_adapt=False, master_weights=False, track_stats=False):
        defaults = dict(lr=lr, betas=floats_of_betas(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, grad_averaging=grad_averaging,
                        max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                        always_adapt=always_adapt)
        super().__init__(params, defaults, master_weights=master_weights, track_stats=track_stats)

    def _validate_group(self, group):
        super()._validate_group(group)
        if len(group["betas"]) != 2:
            raise ValueError(f"Invalid betas: {group['betas']} (need two values)")
        beta1, beta2 = group["betas"]
        _check_float("betas[0]", beta1, 0.0, 1.0, torch_words="beta parameter at index 0")
        _check_float("betas[1]", beta2, 0.0, 1.0, torch_words="beta parameter at index 1")
        _check_float("eps", group["eps"], 0.0, low_inclusive=False, torch_words="epsilon value")
        _check_float("weight_decay", group["weight_decay"], torch_words="weight_decay value")
        max_norm = group["max_grad_norm"]
        if max_norm is not None:
            _check_float("max_grad_norm", max_norm, 0.0, low_inclusive=False)
        if self.param_groups and self.param_groups[0] is not group and \
                max_norm != self.param_groups[0]["max_grad_norm"]:
            raise ValueError(f"max_grad_norm is one for all groups (it clips the norm of every "
                             f"gradient together): {max_norm} differs from the first group's "
                             f"{self.param_groups[0]['max_grad_norm']}")

    def _hypers(self, group):
        return super()._hypers(group) + (("betas[0]", group["betas"][0]),
                                         ("weight_decay", group["weight_decay"]))

    def _max_grad_norm(self):
        # one value for all groups (add_param_group checks it); a loaded state dict or an
        # edited group changes it, as a group's hyperparameters do in torch. An edit of a
        # later group alone had been ignored: refused here, before the step writes anything.
        first = self.param_groups[0].get("max_grad_norm", self.defaults["max_grad_norm"])
        for i, group in enumerate(self.param_groups[1:], 1):
            if group.get("max_grad_norm", first) != first:
                raise ValueError(f"max_grad_norm is one for all groups (it clips the norm of "
                                 f"every gradient together): param group {i}'s "
                                 f"{group['max_grad_norm']} differs from the first group's {first}")
        return first

    def _prepare(self, plan, grads, grad_scale, found_inf):
        max_norm = self._max_grad_norm()
        # (without clipping, step() has run the inf check already: _check_nonfinite)
        check_inf = getattr(self, "_check_inf", False) and found_inf is not None
        self._runtime["clip"] = None
        if max_norm is None:
            return grad_scale
        # One read of every gradient gives the clipping coefficient and, folded in, the
        # inf check; the divisor then rides into the update kernels with grad_scale.
        total = self._global_grad_norm(plan, grads, grad_scale, found_inf if check_inf else None)
        clip = self._runtime["clip"] = torch.clamp(total / max_norm, min=1.0)
        return clip if grad_scale is None else grad_scale.to(clip.device) * clip

    def _check_nonfinite(self, plan, grads, found_inf, grad_scale):
        # Already folded into the clipping pass when max_grad_norm is set.
        if self._max_grad_norm() is None:
            super()._check_nonfinite(plan, grads, found_inf, grad_scale)

    def _run_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        g = b.group
        beta1, beta2 = g["betas"]
        ops.lamb_(b.params, grads, b.state["exp_avg"], b.state["exp_avg_sq"], b.master_params,
                  b.steps, lr, self._hyper_tensor(b, "beta1", beta1), float(beta2),
                  float(g["eps"]), self._hyper_tensor(b, "weight_decay", g["weight_decay"]),
                  bool(g["bias_correction"]), bool(g["grad_averaging"]),
                  bool(g["trust_clip"]), bool(g["always_adapt"]), grad_scale=grad_scale,
                  found_inf=found_inf, stats=stats)

    def _sharded_update_needs_norms(self, group):
        return True

    def _run_sharded_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        beta1 = self._hyper_tensor(b, "beta1", b.group["betas"][0])
        weight_decay = self._hyper_tensor(b, "weight_decay", b.group["weight_decay"])
        sharded.lamb_(b, grads, lr, beta1, weight_decay, grad_scale, found_inf, stats)
