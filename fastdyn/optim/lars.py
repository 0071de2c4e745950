"""fastdyn.optim.LARS (You et al. 2017, "Large Batch Training of Convolutional Networks").

Per parameter p with gradient g, when weight_decay != 0 or always_adapt:
r = trust_coeff ||p|| / (||g|| + weight_decay ||p|| + eps) (1 where ||p|| or ||g|| is 0;
with trust_clip min(r / lr, 1)), d = (g + weight_decay p) r; else d = g. Then torch's SGD
momentum on d (buf = d at the first step) and p <- p - lr d. State key `momentum_buffer`.
"""

from __future__ import annotations

import torch

import fastdyn.ops as ops
from fastdyn.optim import sharded
from fastdyn.optim.optimizer import FusedOptimizer, _check_float
from fastdyn.optim.sgd import momentum_first_step_matters


class LARS(FusedOptimizer):
    _has_step = False

    def __init__(self, params, lr=1.0, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, trust_coeff=0.001, eps=1e-8, trust_clip=False,
                 always_adapt=False, master_weights=False, track_stats=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip,
                        always_adapt=always_adapt)
        super().__init__(params, defaults, master_weights=master_weights, track_stats=track_stats)

    def _validate_group(self, group):
        super()._validate_group(group)
        _check_float("momentum", group["momentum"], torch_words="momentum value")
        _check_float("dampening", group["dampening"], 0.0, 1.0, high_inclusive=True,
                     torch_words="dampening value")
        _check_float("weight_decay", group["weight_decay"], torch_words="weight_decay value")
        _check_float("trust_coeff", group["trust_coeff"], 0.0, low_inclusive=False)
        # eps <= 0 is an error in the contract (DESIGN.md)
        _check_float("eps", group["eps"], 0.0, low_inclusive=False, torch_words="epsilon value")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _hypers(self, group):
        return super()._hypers(group) + (("momentum", group["momentum"]),
                                         ("weight_decay", group["weight_decay"]))

    def _required_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _first_step_matters(self, group):
        return momentum_first_step_matters(group)

    def _run_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        g = b.group
        momentum = self._hyper_tensor(b, "momentum", g["momentum"])
        weight_decay = self._hyper_tensor(b, "weight_decay", g["weight_decay"])
        if not_adapting(g):
            # d = g, then SGD's momentum: sgd_ gives lars_'s bits (the ratio column 1)
            ops.sgd_(b.params, grads, b.state.get("momentum_buffer", []), b.master_params, lr,
                     momentum, float(g["dampening"]), weight_decay, bool(g["nesterov"]), False,
                     b.first_step, grad_scale=grad_scale, found_inf=found_inf, stats=stats)
            return
        ops.lars_(b.params, grads, b.state.get("momentum_buffer", []), b.master_params, lr,
                  momentum, float(g["dampening"]), weight_decay,
                  bool(g["nesterov"]), float(g["trust_coeff"]), float(g["eps"]),
                  bool(g["trust_clip"]), bool(g["always_adapt"]), b.first_step,
                  grad_scale=grad_scale, found_inf=found_inf, stats=stats)

    def _sharded_update_needs_norms(self, group):
        return not not_adapting(group)

    def _run_sharded_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        momentum = self._hyper_tensor(b, "momentum", b.group["momentum"])
        weight_decay = self._hyper_tensor(b, "weight_decay", b.group["weight_decay"])
        sharded.lars_(b, grads, lr, momentum, weight_decay, grad_scale, found_inf, stats)


def not_adapting(group: dict) -> bool:
    """Known on the host that the step has no trust ratio: weight_decay a number, 0, and not
    always_adapt (LARS's default). The step is then SGD with momentum on g, and sgd_ runs it:
    lars_ takes weight_decay as a device tensor, so on a GPU it cannot know that it is 0 and
    would run its norm pass for nothing. (Under torch.compile, a guard on weight_decay == 0.)"""
    wd = group["weight_decay"]
    return not group["always_adapt"] and not isinstance(wd, torch.Tensor) and wd == 0
