"""LAMB and LARS as whole optimizers, written from the contract (DESIGN.md) with plain
single-tensor PyTorch in float64, independent of fastdyn's fused code path: the truth the
drop-in classes are tested against (global clipping included)."""

from __future__ import annotations

import torch

from fastdyn.reference.lamb import lamb_trust_ratio
from fastdyn.reference.lars import lars_trust_ratio


class LambReference(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 bias_correction=True, grad_averaging=True, max_grad_norm=None, trust_clip=False,
                 always_adapt=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, grad_averaging=grad_averaging,
                                      max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                                      always_adapt=always_adapt))

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        clip = 1.0
        max_norm = self.defaults["max_grad_norm"]
        if max_norm is not None and grads:
            total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            clip = 1.0 / max(float(total) / max_norm, 1.0)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float64)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float64)
                st["step"] += 1
                t = float(st["step"])
                g = p.grad.double() * clip
                m = st["exp_avg"].mul_(beta1).add_(g, alpha=(1 - beta1) if group["grad_averaging"] else 1.0)
                v = st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bc1 = 1 - beta1 ** t if group["bias_correction"] else 1.0
                bc2 = 1 - beta2 ** t if group["bias_correction"] else 1.0
                u = (m / bc1) / ((v / bc2).sqrt() + group["eps"])
                w = p.double()
                if wd != 0:
                    u = u + wd * w
                r = lamb_trust_ratio(float(w.norm()), float(u.norm()),
                                     wd != 0 or group["always_adapt"], group["trust_clip"])
                p.copy_(w - float(group["lr"]) * r * u)


class LarsReference(torch.optim.Optimizer):
    def __init__(self, params, lr=1.0, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, trust_coeff=0.001, eps=1e-8, trust_clip=False,
                 always_adapt=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip,
                                      always_adapt=always_adapt))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd, mom = group["weight_decay"], group["momentum"]
            lr = float(group["lr"])
            adapt = wd != 0 or group["always_adapt"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, w = p.grad.double(), p.double()
                r = lars_trust_ratio(float(w.norm()), float(g.norm()), group["trust_coeff"], wd,
                                     group["eps"], lr, adapt, group["trust_clip"])
                d = (g + wd * w) * r if adapt else g
                if mom != 0:
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d.clone()
                    else:
                        st["momentum_buffer"].mul_(mom).add_(d, alpha=1 - group["dampening"])
                    buf = st["momentum_buffer"]
                    d = d + mom * buf if group["nesterov"] else buf
                p.copy_(w - lr * d)
