"""No hidden `.item()` on any device: a step, LossScaler's and GradScaler's bookkeeping and
clip_grad_norm_ run under a dispatch mode that fails on every op that brings a tensor's
value to the host (`.item()`, `float(t)`, `bool(t)`, `torch.equal`; `.tolist()` reads memory
without dispatching, so it is not seen: grep finds none in fastdyn/). On a GPU
each of them would wait for the device; tests/cuda/test_cuda_only.py checks the same there
with torch.cuda.set_sync_debug_mode("error"), this one runs everywhere, on every CI run.
The first step is outside the mode: it allocates state, which may look at values once."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdyn
from helpers import BACKEND_DEVICES
from fastdyn.ops import use_backend
from optim.models import mlp, mlp_loss, regression_data

# aten ops whose result is a Python value read from tensor memory
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
}


class NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"host read of a tensor value: {func}")
        return func(*args, **(kwargs or {}))


OPTS = {
    "Adam": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2),
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True),
    "LAMB": dict(lr=1e-2, max_grad_norm=1.0),
    "LARS": dict(lr=0.5, weight_decay=1e-3, trust_clip=True),
}


def test_the_mode_catches_what_it_must():
    t = torch.ones(())
    for read in (lambda: t.item(), lambda: float(t), lambda: bool(t), lambda: torch.equal(t, t)):
        with NoHostReads(), pytest.raises(AssertionError, match="host read"):
            read()


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if "cuda" not in p.id])
@pytest.mark.parametrize("scaler_kind", ["LossScaler", "GradScaler"])
@pytest.mark.parametrize("track_stats", [False, True], ids=["", "stats"])
@pytest.mark.parametrize("name", list(OPTS))
def test_step_reads_nothing_back(name, track_stats, scaler_kind, backend, device):
    torch.manual_seed(0)
    model = mlp().to(device)
    lr = torch.tensor(OPTS[name]["lr"], device=device)
    opt = getattr(fastdyn.optim, name)(model.parameters(), **{**OPTS[name], "lr": lr},
                                       track_stats=track_stats)
    scaler = (fastdyn.amp.LossScaler(device) if scaler_kind == "LossScaler"
              else torch.amp.GradScaler(device))
    data = tuple(t.to(device) for t in regression_data())
    with use_backend(backend):
        for i in range(3):
            opt.zero_grad()
            scaler.scale(mlp_loss(model, data)).backward()
            if i == 0:  # state allocation
                scaler.step(opt)
                scaler.update()
                continue
            with NoHostReads():
                scaler.step(opt)
                scaler.update()
                total = fastdyn.clip_grad_norm_(model.parameters(), 1.0)
                if track_stats:
                    opt.last_stats()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if "cuda" not in p.id])
@pytest.mark.parametrize("name", list(OPTS))
def test_tensor_hyperparameters_are_read_on_the_device(name, backend, device):
    """What the kernels read from one-element tensors may be a tensor in the group (a schedule
    computed on the device): lr, beta1 and weight_decay of Adam and LAMB (whether LAMB adapts,
    weight_decay != 0, decided on the device); lr and weight_decay of SGD and LARS (their
    momentum is read on the host: whether there are buffers; LARS with a tensor weight_decay
    takes its norms whether or not it adapts)."""
    torch.manual_seed(0)
    model = mlp().to(device)
    opt = getattr(fastdyn.optim, name)(model.parameters(), **OPTS[name])
    data = tuple(t.to(device) for t in regression_data())
    with use_backend(backend):
        for i in range(3):
            opt.zero_grad()
            mlp_loss(model, data).backward()
            for group in opt.param_groups:
                group["lr"] = torch.tensor(1e-2 / (i + 1), device=device)
                group["weight_decay"] = torch.tensor(0.01 * i, device=device)  # 0 first
                if "betas" in group:
                    group["betas"] = (torch.tensor(0.9 - 0.01 * i, device=device), 0.999)
            if i == 0:  # state allocation
                opt.step()
                continue
            with NoHostReads():
                opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
