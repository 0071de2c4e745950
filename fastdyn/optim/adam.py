"""fastdyn.optim.Adam / AdamW: drop-ins for torch.optim.Adam / AdamW (same signature,
defaults, results and state_dict layout), every step fused into one op per (device, dtype)."""

from __future__ import annotations

import fastdyn.ops as ops
from fastdyn.optim.optimizer import FusedOptimizer, _check_float, floats_of_betas


class Adam(FusedOptimizer):
    """Adam (Kingma & Ba) with torch.optim.Adam's options.

    `foreach` and `fused` are accepted for compatibility and ignored (the step is always
    fused); `capturable` is accepted and always true in effect: step counters live on the
    device and nothing syncs. fastdyn extras: `master_weights` keeps fp32 copies (state
    key `master_param`) and fp32 moments for fp16/bf16 params; `track_stats` records
    per-tensor norms (see `last_stats()`).
    """

    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 master_weights=False, track_stats=False):
        if differentiable:
            raise ValueError("differentiable=True is not supported by fastdyn's fused Adam; "
                             "use torch.optim.Adam for differentiable optimizer steps")
        betas = floats_of_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, master_weights=master_weights, track_stats=track_stats)

    def _validate_group(self, group):
        super()._validate_group(group)
        beta1, beta2 = group["betas"]
        _check_float("betas[0]", beta1, 0.0, 1.0, torch_words="beta parameter at index 0")
        _check_float("betas[1]", beta2, 0.0, 1.0, torch_words="beta parameter at index 1")
        # eps <= 0 is an error in the contract (DESIGN.md), though torch's Adam takes 0
        _check_float("eps", group["eps"], 0.0, low_inclusive=False, torch_words="epsilon value")
        _check_float("weight_decay", group["weight_decay"], torch_words="weight_decay value")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)

    def _hypers(self, group):
        return super()._hypers(group) + (("betas[0]", group["betas"][0]),
                                         ("weight_decay", group["weight_decay"]))

    def _required_keys(self, group):
        return self._state_keys + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _run_bucket(self, b, grads, lr, grad_scale, found_inf, stats):
        g = b.group
        beta1, beta2 = g["betas"]
        ops.adam_(b.params, grads, b.state["exp_avg"], b.state["exp_avg_sq"],
                  b.state.get("max_exp_avg_sq", []), b.master_params, b.steps, lr,
                  self._hyper_tensor(b, "beta1", beta1), float(beta2),
                  self._hyper_tensor(b, "weight_decay", g["weight_decay"]), float(g["eps"]),
                  bool(g["amsgrad"]), bool(g["maximize"]), bool(g["decoupled_weight_decay"]),
                  grad_scale=grad_scale, found_inf=found_inf, stats=stats)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, as torch.optim.AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, master_weights=False, track_stats=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, master_weights=master_weights,
                         track_stats=track_stats)

    def __setstate__(self, state):
        # (load_state_dict runs this too: an Adam state dict loads, and the decay stays
        # decoupled, as in torch.optim.AdamW)
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
