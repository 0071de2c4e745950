"""`fastdyn demo`: train a small transformer on a synthetic sequence task with the fused
LAMB step, global gradient clipping folded into it, a warmup + cosine schedule, and the
per-tensor statistics the step computes for free; print how training goes."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import fastdyn


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, heads: int = 4, layers: int = 2, seq: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def batch(gen, vocab, n, seq, device):
    """Sequences whose second half repeats the first: a model that learns to copy drives the
    loss of the second half toward 0 (the first half stays at ~ln(vocab))."""
    half = seq // 2
    first = torch.randint(1, vocab, (n, half), generator=gen)
    x = torch.cat([first, first], dim=1)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run(steps: int = 600, device=None, seed: int = 0) -> int:
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    vocab, seq, batch_size = 16, 16, 32
    model = TinyGPT(vocab, seq=seq).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    # named parameters: the stats rows carry their names (last_stats().names)
    opt = fastdyn.optim.LAMB(model.named_parameters(), lr=torch.tensor(1e-2, device=device),
                             weight_decay=0.01, max_grad_norm=1.0, track_stats=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, steps // 10))
    use_scaler = device.type == "cuda"
    scaler = fastdyn.amp.LossScaler(device.type) if use_scaler else None
    gen = torch.Generator().manual_seed(seed)
    print(f"fastdyn demo: {n_params / 1e3:.0f}k-parameter transformer on {device}, "
          f"LAMB (fused, {fastdyn.ops.backend_for(device)} backend) with max_grad_norm=1.0"
          + (", fp16 autocast + LossScaler" if use_scaler else ""))
    print(f"{'step':>5} {'loss':>8} {'copy-half':>9} {'lr':>9} {'|g|':>8} {'trust r min/max':>17} {'ms/step':>8}")
    first_copy = last_copy = None
    last_print = 0
    t_last = time.perf_counter()
    for step in range(steps):
        report = step % 50 == 0 or step == steps - 1
        # the lr this step uses (sched.step() below sets the next one's); read only to print,
        # as it is a host sync on a GPU
        lr = float(opt.param_groups[0]["lr"]) if report else None
        x, y = batch(gen, vocab, batch_size, seq, device)
        with torch.autocast(device.type, dtype=torch.float16 if use_scaler else torch.bfloat16,
                            enabled=use_scaler):
            logits = model(x)
            losses = nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1),
                                                 reduction="none").view(batch_size, -1)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        if report:
            copy_loss = losses[:, seq // 2:].mean().item()
            first_copy = copy_loss if first_copy is None else first_copy
            last_copy = copy_loss
            ms = (time.perf_counter() - t_last) * 1e3 / max(1, step - last_print)
            last_print = step
            t_last = time.perf_counter()
            print(f"{step:>5} {loss.item():>8.4f} {copy_loss:>9.4f} {lr:>9.2e} "
                  f"{_stats_columns(opt.last_stats())} {ms:>8.1f}")
    _print_largest_gradient(opt.last_stats())
    learned = last_copy < 0.5 * first_copy
    print(f"copy-half loss {first_copy:.3f} -> {last_copy:.3f}: "
          + ("the model learned to copy." if learned else "did not learn to copy (try more --steps)."))
    return 0 if learned else 1


def _stats_columns(stats) -> str:
    """|g| and the trust ratios' range of the last step; dashes for a step without statistics
    (last_stats() is None when the step had no gradients)."""
    if stats is None:
        return f"{'-':>8} {'-':>17}"
    r = stats.values[:, 3]
    gnorm = stats.grad_norm.item() if stats.grad_norm is not None else float("nan")
    return f"{gnorm:>8.3f} {r.min().item():>8.3f}/{r.max().item():<8.3f}"


def _print_largest_gradient(stats) -> None:
    if stats is None:
        return
    worst = stats.values[:, 0].argmax().item()
    print(f"largest gradient norm in the last step: {stats.names[worst]} "
          f"({stats.values[worst, 0].item():.3g}); update/param ratio there "
          f"{(stats.values[worst, 2] / stats.values[worst, 1].clamp_min(1e-12)).item():.2e}")
