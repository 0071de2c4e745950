"""fastdyn.optim.SGD: a drop-in for torch.optim.SGD (momentum, dampening, nesterov,
weight_decay, maximize; state key `momentum_buffer`), fused into one op per (device, dtype)."""

from __future__ import annotations

import fastdyn.ops as ops
from fastdyn.optim.optimizer import FusedOptimizer, _check_float


def momentum_first_step_matters(group) -> bool:
    """Momentum buffers start at zero, which gives torch's first step (buf = d) exactly when
    dampening is 0: 0*momentum + (1-0)*d == d, bit for bit, and a step skipped for inf/NaN
    leaves a valid buffer behind. Only with dampening the first step needs its own flag: a
    host flag, or a device one where found_inf may skip the step (Bucket.started). A state
    dict saved before any step of a buffer ran holds it as zeros, as a started buffer."""
    return group["momentum"] != 0 and group["dampening"] != 0


class SGD(FusedOptimizer):
    """Stochastic gradient descent with torch.optim.SGD's options. `foreach`/`fused` are
    accepted and ignored; `master_weights`/`track_stats` as in fastdyn.optim.Adam."""

    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None,
                 master_weights=False, track_stats=False):
        if differentiable:
            raise ValueError("differentiable=True is not supported by fastdyn's fused SGD")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, master_weights=master_weights, track_stats=track_stats)

    def _validate_group(self, group):
        super()._validate_group(group)
        _check_float("momentum", group["momentum"], torch_words="momentum value")
        _check_float("weight_decay", group["weight_decay"], torch_words="weight_decay value")
        _check_float("dampening", group["dampening"], 0.0, 1.0, high_inclusive=True,
                     torch_words="dampening value")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)

    def _hypers(self, group):
        return super()._hypers(group) + (("momentum", group["momentum"]),
                                         ("weight_decay", group["weight_decay"]))

    def _required_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _first_step_matters(self, group):
        return momentum_first_step_matters(group)

    def _run_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        g = b.group
        ops.sgd_(b.params, grads, b.state.get("momentum_buffer", []), b.master_params, lr,
                 self._hyper_tensor(b, "momentum", g["momentum"]), float(g["dampening"]),
                 self._hyper_tensor(b, "weight_decay", g["weight_decay"]),
                 bool(g["nesterov"]), bool(g["maximize"]), b.first_step,
                 grad_scale=grad_scale, found_inf=found_inf, stats=stats)
