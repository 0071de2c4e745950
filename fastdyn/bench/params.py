"""Parameter sets the benchmarks run on."""

from __future__ import annotations

import os

import torch


def gpt_shapes(d: int, vocab: int, ctx: int, layers: int) -> list:
    """Parameter shapes of a GPT-2-style model: embeddings, then per layer two LayerNorms,
    attention (fused qkv + projection) and the 4x MLP, then the final LayerNorm."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
                   (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def gpt2_small_shapes() -> list:
    """The 148 parameter tensors of GPT-2 small (124M parameters)."""
    return gpt_shapes(d=768, vocab=50257, ctx=1024, layers=12)


def gpt_1b_shapes() -> list:
    """A 1.1B-parameter GPT (d=2048, 20 layers, vocab 50257, context 2048): 244 tensors."""
    return gpt_shapes(d=2048, vocab=50257, ctx=2048, layers=20)


def small_shapes(n: int = 1000, size: int = 4096) -> list:
    """Many small tensors (biases, norms, adapters): where per-tensor dispatch dominates."""
    return [(size,)] * n


def scale() -> float:
    """FASTDYN_BENCH_SCALE shrinks every set (smoke tests); 1 = the real sizes."""
    return float(os.environ.get("FASTDYN_BENCH_SCALE", "1"))


def scaled(shapes: list) -> list:
    s = scale()
    if s == 1:
        return shapes
    return [tuple(max(1, int(round(d * s ** (1 / len(sh))))) for d in sh) for sh in shapes]


PARAM_SETS = {
    "gpt2-small": gpt2_small_shapes,
    "gpt-1b": gpt_1b_shapes,
    "1000-small": small_shapes,
}


def make_params(shapes, device, dtype=torch.float32, seed=0, grad_scale=1e-3):
    """nn.Parameters with random gradients set."""
    device = torch.device(device)
    # drawn where they live: a 1B-parameter set drawn on the CPU takes longer than its benchmark
    g = torch.Generator(device=device).manual_seed(seed)
    params = []
    for sh in scaled(shapes):
        p = torch.nn.Parameter((torch.randn(sh, generator=g, device=device) * 0.02).to(dtype))
        p.grad = (torch.randn(sh, generator=g, device=device) * grad_scale).to(dtype)
        params.append(p)
    return params


def numel(params) -> int:
    return sum(p.numel() for p in params)
