"""Small real models for the optimizer tests: an MLP and a tiny transformer."""

import torch
from torch import nn


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 4)).to(dtype)


class TinyTransformer(nn.Module):
    def __init__(self, vocab=37, dim=32, heads=4, layers=2, seq=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos[: tokens.shape[1]]))


def regression_data(n=128, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    w = torch.randn(12, 4, generator=g)
    return x.to(dtype), torch.tanh(x @ w).to(dtype)


def token_data(n=32, seq=16, vocab=37, seed=2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, seq + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def mlp_loss(model, data):
    x, y = data
    return nn.functional.mse_loss(model(x), y)


def lm_loss(model, data):
    x, y = data
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(model, opt, loss_fn, data, steps, scheduler=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses
