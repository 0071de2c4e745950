"""What fastdyn is measured against, besides torch's own optimizers: LAMB and LARS in plain
PyTorch written the way timm's lamb.py / lars.py write them, as foreach (multi-tensor) ops,
and single-tensor fp32 steps for torch.compile to fuse."""

from __future__ import annotations

import torch


class ForeachLamb:
    """timm-style LAMB with torch._foreach_* ops (the contract's math, fp32)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 max_grad_norm=1.0, loss_scale=False):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.wd, self.max_norm = lr, betas, eps, weight_decay, max_grad_norm
        # GradScaler's own unscale + inf check (in place on the grads), by 1 so values stay put
        self.inv_scale = torch.ones((), device=self.params[0].device) if loss_scale else None
        self.found_inf = torch.zeros((), device=self.params[0].device) if loss_scale else None
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.step_count = 0

    @torch.no_grad()
    def step(self):
        self.step_count += 1
        b1, b2 = self.betas
        grads = [p.grad for p in self.params]
        one = torch.ones((), device=grads[0].device)
        if self.inv_scale is not None:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.inv_scale)
        if self.max_norm is not None:
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            clip = torch.where(total > self.max_norm, total / self.max_norm, one)
            grads = torch._foreach_div(grads, clip)  # timm divides p.grad in place; a copy keeps grads intact
        torch._foreach_mul_(self.m, b1)
        torch._foreach_add_(self.m, grads, alpha=1 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - b2)
        bc1 = 1 - b1 ** self.step_count
        bc2 = 1 - b2 ** self.step_count
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, bc2 ** 0.5)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(self.m, denom)
        torch._foreach_div_(update, bc1)
        if self.wd:
            torch._foreach_add_(update, self.params, alpha=self.wd)
        w_norm = torch._foreach_norm(self.params)
        u_norm = torch._foreach_norm(update)
        ratios = [torch.where((w > 0) & (u > 0), w / u, one) for w, u in zip(w_norm, u_norm)]
        torch._foreach_mul_(update, ratios)
        torch._foreach_add_(self.params, update, alpha=-self.lr)


class ForeachLars:
    """timm-style LARS with torch._foreach_* ops (the contract's math, fp32)."""

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=1e-4, trust_coeff=0.001, eps=1e-8):
        self.params = list(params)
        self.lr, self.mom, self.wd, self.tc, self.eps = lr, momentum, weight_decay, trust_coeff, eps
        self.buf = None

    @torch.no_grad()
    def step(self):
        grads = [p.grad for p in self.params]
        one = torch.ones((), device=grads[0].device)
        w_norm = torch._foreach_norm(self.params)
        g_norm = torch._foreach_norm(grads)
        ratios = [torch.where((w > 0) & (g > 0), self.tc * w / (g + self.wd * w + self.eps), one)
                  for w, g in zip(w_norm, g_norm)]
        d = torch._foreach_add(grads, self.params, alpha=self.wd)
        torch._foreach_mul_(d, ratios)
        if self.buf is None:
            self.buf = [t.clone() for t in d]
        else:
            torch._foreach_mul_(self.buf, self.mom)
            torch._foreach_add_(self.buf, d)
        torch._foreach_add_(self.params, self.buf, alpha=-self.lr)


def lamb_reference_step(params, grads, ms, vs, step: int, lr: float = 1e-3, b1: float = 0.9,
                        b2: float = 0.999, eps: float = 1e-6, wd: float = 0.01,
                        max_norm: float = 1.0, inv_scale=None):
    """Single-tensor fp32 LAMB step (the contract), for torch.compile to fuse; with inv_scale
    (a tensor) it also unscales the grads and skips the update when any is non-finite."""
    if inv_scale is not None:
        grads = [g * inv_scale for g in grads]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    clip = torch.clamp(total / max_norm, min=1.0)
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    for p, g, m, v in zip(params, grads, ms, vs):
        g = g / clip
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        u = (m / bc1) / ((v / bc2).sqrt() + eps) + wd * p
        pn, un = p.norm(), u.norm()
        r = torch.where((pn > 0) & (un > 0), pn / un, torch.ones_like(pn))
        if inv_scale is not None:
            r = torch.where(finite, r, torch.zeros_like(r))  # (m, v would be rolled back too)
        p.sub_(lr * r * u)


def lars_reference_step(params, grads, bufs, lr: float = 1.0, momentum: float = 0.9,
                        wd: float = 1e-4, tc: float = 0.001, eps: float = 1e-8):
    """Single-tensor fp32 LARS step (the contract), for torch.compile to fuse."""
    for p, g, b in zip(params, grads, bufs):
        pn, gn = p.norm(), g.norm()
        r = torch.where((pn > 0) & (gn > 0), tc * pn / (gn + wd * pn + eps), torch.ones_like(pn))
        d = (g + wd * p) * r
        b.mul_(momentum).add_(d)
        p.sub_(lr * b)
