"""What each rank of the distributed tests runs (in a process of its own, on gloo), and the
single-process runs it is compared with. A rank writes what it saw to `<out>/rank<r>.pt`."""

from __future__ import annotations

import datetime
import os
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fastdyn
from fastdyn.amp import LossScaler
from fastdyn.optim import LAMB, LARS, SGD, AdamW
from helpers import fullgraph_step

WORLD = 2
STEPS = 5
BATCH = 8

# name -> (optimizer class, keyword arguments); each trains the model below for STEPS steps
CASES = {
    "adamw": (AdamW, dict(lr=1e-2, weight_decay=0.1, track_stats=True)),
    "sgd-nesterov": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "lamb-clip": (LAMB, dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.5, track_stats=True)),
    "lamb-adapt": (LAMB, dict(lr=1e-2, weight_decay=0.0, always_adapt=True, trust_clip=True,
                              bias_correction=False, grad_averaging=False)),
    "lars": (LARS, dict(lr=0.5, momentum=0.9, weight_decay=1e-3, track_stats=True)),
    "lars-clip": (LARS, dict(lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-2,
                             trust_clip=True, trust_coeff=0.02)),
}


def make_model() -> torch.nn.Module:
    # 24x12, 5x24 and 5: shards of 12/12 and 3/2 rows on two ranks (FSDP2 splits dim 0)
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24),
                               torch.nn.Tanh(), torch.nn.Linear(24, 5))


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 12, generator=g), torch.randn(BATCH, 5, generator=g))
            for _ in range(STEPS)]


def rows(x: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's half of a batch: the mean of the ranks' mean losses (FSDP2 and DDP average
    gradients) is the single process's mean loss over the whole batch."""
    per = x.shape[0] // WORLD
    return x[rank * per:(rank + 1) * per]


def train(model, opt, data, rank=None) -> None:
    """One step per batch; with `rank`, on that rank's half of each batch (data parallel).
    The batches take the model's dtype."""
    dtype = next(model.parameters()).dtype
    for x, y in data:
        if rank is not None:
            x, y = rows(x, rank), rows(y, rank)
        x, y = x.to(dtype), y.to(dtype)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def train_single(case: str):
    """The case in one process on plain tensors (the fused kernels): params and last stats."""
    cls, kwargs = CASES[case]
    model = make_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, batches())
    stats = opt.last_stats()
    return [p.detach().clone() for p in model.parameters()], (None if stats is None else stats.values)


def _fsdp_model(dtype=torch.float32):
    from torch.distributed.fsdp import fully_shard

    model = make_model().to(dtype)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _train_fsdp(case: str, rank: int) -> dict:
    cls, kwargs = CASES[case]
    model = _fsdp_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, batches(), rank)
    stats = opt.last_stats()
    p0 = next(model.parameters())
    state = opt.state[p0]
    return {
        "params": [p.full_tensor().detach().clone() for p in model.parameters()],
        "stats": None if stats is None else stats.values.clone(),
        "state_types": sorted({f"{type(v).__name__}{tuple(getattr(v, 'placements', ()))}"
                               for k, v in state.items() if k != "step"}),
        "param_type": f"{type(p0).__name__}{tuple(p0.placements)}",
    }


MASTER_CASES = ("adamw", "lamb-clip", "lars")


def _masters_of(model, opt) -> dict:
    """bf16 params with fp32 master weights: the masters (whole tensors), whether each param
    is its master rounded, and the master's type and placements."""
    params = list(model.parameters())
    masters = [opt.state[p]["master_param"] for p in params]
    full = [m.full_tensor() if hasattr(m, "full_tensor") else m for m in masters]
    return {
        "masters": [m.detach().clone() for m in full],
        "params_are_masters_rounded": [
            torch.equal(p.full_tensor() if hasattr(p, "full_tensor") else p, m.to(p.dtype))
            for p, m in zip(params, full)],
        "master_type": f"{type(masters[0]).__name__}{tuple(getattr(masters[0], 'placements', ()))}"
                       f" {masters[0].dtype}",
    }


def train_master(case: str, rank=None) -> dict:
    """The case on a bfloat16 model with master_weights=True: in one process on plain
    tensors (rank None), or FSDP2-sharded on this rank."""
    cls, kwargs = CASES[case]
    model = make_model().to(torch.bfloat16) if rank is None else _fsdp_model(torch.bfloat16)
    opt = cls(model.parameters(), **kwargs, master_weights=True)
    train(model, opt, batches(), rank)
    return _masters_of(model, opt)


def _tp_model():
    """Tensor parallel on one mesh: layer 0 column-wise (weight and bias Shard(0)), layer 2
    row-wise (weight Shard(1), bias Replicate), layer 4 left plain, replicated by hand:
    every placement, and plain params beside DTensors in one optimizer."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    mesh = init_device_mesh("cpu", (WORLD,))
    return parallelize_module(make_model(), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _train_tp(case: str, rank: int) -> dict:
    """Every rank sees the whole batch, as tensor parallelism wants."""
    cls, kwargs = CASES[case]
    model = _tp_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, batches())
    stats = opt.last_stats()
    return {
        "params": [_full(p).detach().clone() for p in model.parameters()],
        "stats": None if stats is None else stats.values.clone(),
        "placements": [str(tuple(getattr(p, "placements", ()))) for p in model.parameters()],
    }


def _clip_tp(rank: int) -> dict:
    """fastdyn.clip_grad_norm_ on tensor-parallel grads (Shard(0), Shard(1), Replicate and
    plain tensors together, which torch's own refuses as mixed) against torch's on one
    process's model."""
    x, y = batches()[0]
    model = _tp_model()
    F.mse_loss(model(x), y).backward()
    total = fastdyn.clip_grad_norm_(model.parameters(), 0.05)
    return {"total": _full(total), "grads": [_full(p.grad) for p in model.parameters()]}


def _train_ddp(case: str, rank: int) -> list:
    cls, kwargs = CASES[case]
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, batches(), rank)
    return [p.detach().clone() for p in model.parameters()]


def _clip(rank: int, norm_type: float, **kwargs) -> dict:
    """fastdyn.clip_grad_norm_ against torch's on the same FSDP2 (DTensor) gradients."""
    x, y = batches()[0]
    models = [_fsdp_model(), _fsdp_model()]
    for model in models:
        F.mse_loss(model(rows(x, rank)), rows(y, rank)).backward()
    theirs, ours = (list(m.parameters()) for m in models)
    torch_total = torch.nn.utils.clip_grad_norm_(theirs, 0.05, norm_type, **kwargs)
    fd_total = fastdyn.clip_grad_norm_(ours, 0.05, norm_type, **kwargs)
    return {
        "torch_total": torch_total.full_tensor(),
        "fastdyn_total": fd_total.full_tensor(),
        "fastdyn_total_type": type(fd_total).__name__,
        "torch_grads": [p.grad.full_tensor() for p in theirs],
        "fastdyn_grads": [p.grad.full_tensor() for p in ours],
    }


def train_scaled(case: str, rank=None) -> list:
    """The case under torch.amp.GradScaler, which hands the step grad_scale: sharded LAMB and
    LARS take their trust ratios from the norms of the unscaled gradients (a ||g|| left times
    the scale shrinks LARS's ratio by it). On FSDP2 with `rank`, else in one process."""
    return train_scaled_as(*SCALED_CASES[case], rank=rank)


def train_scaled_as(name: str, init_scale: float, loss_factor: float, rank=None) -> list:
    """train_scaled of CASES or SCALED_ONLY's `name` under that scale, with the loss times
    loss_factor."""
    cls, kwargs = CASES.get(name) or SCALED_ONLY[name]
    model = make_model() if rank is None else _fsdp_model()
    opt = cls(model.parameters(), **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    for x, y in batches():
        if rank is not None:
            x, y = rows(x, rank), rows(y, rank)
        scaler.scale(F.mse_loss(model(x), y) * loss_factor).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    return [(p if rank is None else p.full_tensor()).detach().clone() for p in model.parameters()]


def _scaler_skip(rank: int, kind: str) -> dict:
    """An inf in one rank's gradient shard only: every rank skips the step (and, with
    LossScaler, backs off)."""
    model = _fsdp_model()
    if kind == "loss_scaler":
        opt = LAMB(model.parameters(), lr=1e-2, max_grad_norm=1.0, track_stats=True)
        scaler = LossScaler(device="cpu", init_scale=2.0 ** 8)
    elif kind == "loss_scaler_unscale":  # unscale_, clip the unscaled grads, then step
        opt = AdamW(model.parameters(), lr=1e-2, track_stats=True)
        scaler = LossScaler(device="cpu", init_scale=2.0 ** 8)
    else:
        opt = AdamW(model.parameters(), lr=1e-2, track_stats=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    seen = {}
    for step, (x, y) in enumerate(batches()[:3]):
        scaler.scale(F.mse_loss(model(rows(x, rank)), rows(y, rank))).backward()
        if step == 1:
            before = [p.full_tensor().clone() for p in model.parameters()]
            state_before = {k: v.full_tensor().clone() for k, v in opt.state[next(model.parameters())].items()
                            if k != "step"}
            steps_before = [opt.state[p]["step"].clone() for p in model.parameters()]
            if rank == 1:
                next(model.parameters()).grad.to_local().view(-1)[3] = float("inf")
        if kind == "loss_scaler_unscale":
            scaler.unscale_(opt)
            fastdyn.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        if step == 1:
            seen["params_kept"] = all(torch.equal(a, p.full_tensor()) for a, p in zip(before, model.parameters()))
            seen["state_kept"] = all(torch.equal(v, opt.state[next(model.parameters())][k].full_tensor())
                                     for k, v in state_before.items())
            seen["steps_kept"] = all(torch.equal(s, opt.state[p]["step"])
                                     for s, p in zip(steps_before, model.parameters()))
            seen["scale_after_skip"] = scaler.get_scale()
            seen["stats_nan"] = bool(opt.last_stats().values.isnan().all())
        opt.zero_grad()
    seen["final_step"] = float(opt.state[next(model.parameters())]["step"])
    seen["finite"] = all(torch.isfinite(p.full_tensor()).all() for p in model.parameters())
    return seen


def _resume(rank: int) -> dict:
    """Train STEPS; and train 2, save both state dicts, rebuild model and optimizer, load,
    train the rest: the same bits (the state dict holds DTensor shards, as torch's does)."""
    cls, kwargs = CASES["lamb-clip"]
    data = batches()

    model = _fsdp_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, data, rank)
    straight = [p.full_tensor().clone() for p in model.parameters()]
    model = _fsdp_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, data[:2], rank)
    model_sd, opt_sd = model.state_dict(), opt.state_dict()
    model = _fsdp_model()
    model.load_state_dict(model_sd)
    opt = cls(model.parameters(), **kwargs)
    opt.load_state_dict(opt_sd)
    train(model, opt, data[2:], rank)
    return {"bitwise": all(torch.equal(a, p.full_tensor()) for a, p in zip(straight, model.parameters()))}


def _compiled(case: str, rank: int) -> dict:
    """torch.compile(fullgraph=True) of the step on FSDP2 params (the all-reduces traced with
    the kernels) against the eager step on a twin model: bits, and graphs for STEPS steps.
    Named params: the stats rows of the compiled step (whose buckets are rebuilt around fresh
    local shards each step, Bucket.with_fresh_locals) keep their names."""
    cls, kwargs = CASES[case]
    kwargs = dict(kwargs, lr=torch.tensor(kwargs["lr"]))
    models = [_fsdp_model(), _fsdp_model()]
    compiled, eager = (cls(m.named_parameters(), **dict(kwargs, lr=kwargs["lr"].clone()))
                       for m in models)
    step, graphs = fullgraph_step(compiled)
    for i, (x, y) in enumerate(batches()):
        for model, opt in zip(models, (compiled, eager)):
            opt.zero_grad()
            F.mse_loss(model(rows(x, rank)), rows(y, rank)).backward()
        step()
        eager.step()
        for opt in (compiled, eager):  # a changed tensor lr must not recompile
            opt.param_groups[0]["lr"].mul_(0.9)
    stats = compiled.last_stats()
    return {"graphs": len(graphs), "names": None if stats is None else list(stats.names),
            "model_names": [n for n, _ in models[0].named_parameters()],
            "bitwise": all(torch.equal(a.full_tensor(), b.full_tensor())
                           for a, b in zip(*(m.parameters() for m in models)))}


def _compiled_by(backend: str, case: str, rank: int) -> dict:
    """The step compiled by an AOT backend (which functionalizes the ops' writes: inductor,
    torch.compile's default, and aot_eager) against the eager step: every step must move
    the params as the eager one does. Under aot_eager the FSDP2 params stopped moving after
    the first compiled step: the plan kept the locals traced at that step, which aot_eager
    had handed back as copies (Bucket.with_fresh_locals)."""
    cls, kwargs = CASES[case]
    models = [_fsdp_model(), _fsdp_model()]
    compiled, eager = (cls(m.parameters(), **kwargs) for m in models)
    step = torch.compile(type(compiled).step, fullgraph=True, backend=backend)
    moved = []
    for x, y in batches():
        before = [p.full_tensor() for p in models[0].parameters()]
        for model, opt in zip(models, (compiled, eager)):
            opt.zero_grad()
            F.mse_loss(model(rows(x, rank)), rows(y, rank)).backward()
        step(compiled)
        eager.step()
        moved.append(max(float((p.full_tensor() - b).abs().max())
                         for p, b in zip(models[0].parameters(), before)))
    return {"moved": moved, "params": [p.full_tensor() for p in models[0].parameters()],
            "eager": [p.full_tensor() for p in models[1].parameters()]}


def _storage_swapped(rank: int) -> dict:
    """FSDP2 gives the DTensor params new local tensors in `model.double().float()` (the
    Parameter objects stay): fastdyn's AdamW must step the new ones, as torch's does (its
    cached plan kept stepping the old ones, and the model stopped training)."""
    out = {}
    for name, cls in (("torch", torch.optim.AdamW), ("fastdyn", AdamW)):
        model = _fsdp_model()
        opt = cls(model.parameters(), lr=1e-2)
        for i, (x, y) in enumerate(batches()):
            if i == 2:
                model.double().float()  # same values, new storage
            F.mse_loss(model(rows(x, rank)), rows(y, rank)).backward()
            opt.step()
            opt.zero_grad()
        out[name] = [p.full_tensor().detach().clone() for p in model.parameters()]
    return out


def _partial_refused(rank: int) -> str:
    """A parameter whose local values are pending sums cannot be updated shard-wise."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    mesh = init_device_mesh("cpu", (WORLD,))
    p = torch.nn.Parameter(DTensor.from_local(torch.ones(4), mesh, [Partial()]))
    p.grad = DTensor.from_local(torch.ones(4), mesh, [Partial()])
    try:
        LARS([p], lr=0.1, weight_decay=1e-3).step()
    except ValueError as e:
        return str(e)
    return "no error"


def _partial_grads(rank: int) -> dict:
    """Gradients placed unlike their params: a Replicate weight applied to a Shard(0) input
    gets a Partial(sum) gradient (sequence parallelism's LayerNorm weights do), and a
    Replicate gradient set on a Shard(0) param. fastdyn against torch's optimizers, which
    redistribute them (fastdyn had stepped each rank's partial sum: the replicas diverged);
    clip_grad_norm_ against torch's; LossScaler's unscale_ and step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))

    def partial_param():
        w = torch.nn.Parameter(distribute_tensor(torch.linspace(0.5, 2.0, 4), mesh, [Replicate()]))
        x = distribute_tensor(torch.arange(16.0).reshape(4, 4), mesh, [Shard(0)])
        return w, x

    def backward(w, x, scale=1.0):
        (scale * (x * w).sum() * (w * w).sum()).backward()
        if not w.grad.placements[0].is_partial():  # torch 2.11's autograd sums it already
            w.grad = DTensor.from_local(w.grad.to_local() / WORLD, mesh, [Partial()])

    out = {}
    for name, cls, kw in (("sgd", SGD, dict(lr=0.1, momentum=0.9)),
                          ("adamw", AdamW, dict(lr=0.1)),
                          ("lamb", LAMB, dict(lr=0.1, max_grad_norm=1.0))):
        result = {}
        for who, make in (("fastdyn", cls), ("torch", getattr(torch.optim, cls.__name__, None))):
            if make is None:  # LAMB: against the same step on the gradient made Replicate
                make = cls
            w, x = partial_param()
            backward(w, x)
            result["placement"] = str(w.grad.placements)
            if who == "torch" and cls is LAMB:
                w.grad = w.grad.redistribute(mesh, [Replicate()])
            make([w], **kw).step()
            result[who] = w.to_local().clone()
        out[name] = result
    # (torch 2.11's own clip measures such a gradient but leaves it unscaled)
    w, x = partial_param()
    backward(w, x)
    out["clip_unclipped"] = w.grad.full_tensor().clone()
    total = fastdyn.clip_grad_norm_([w], 1.0)
    out["clip"] = (_full(total).clone(), w.grad.full_tensor().clone())
    # LossScaler: unscale_ writes the gradient redistributed; the step takes it
    for who in ("scaled", "plain"):
        w, x = partial_param()
        opt = SGD([w], lr=0.1)
        if who == "scaled":
            scaler = LossScaler("cpu", init_scale=2.0 ** 4)
            scaler.scale(torch.ones(()))  # (the scale's tensor; the loss is scaled by hand)
            backward(w, x, scale=2.0 ** 4)
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        else:
            backward(w, x)
            opt.step()
        out[f"scaler_{who}"] = w.to_local().clone()
    # a Replicate gradient on a Shard(0) param: the param's rows of it
    for who, cls in (("fastdyn", SGD), ("torch", torch.optim.SGD)):
        w = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
        w.grad = distribute_tensor(torch.arange(8.0).reshape(4, 2), mesh, [Replicate()])
        cls([w], lr=0.1).step()
        out[f"replicate_grad_{who}"] = w.full_tensor().clone()
    return out


def _layout_on_one_rank(rank: int) -> dict:
    """A hand-assigned DTensor gradient laid out unlike its Shard(0) param on one rank only
    (rank 1's 1-row shard counts as laid out alike): LARS's sharded step all-reduces norms
    before its update op, whose refusal on rank 0 had made that rank retry and all-reduce
    again alone (both ranks hung). Now every rank copies before any all-reduce."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    out = {}
    for layout in ("column_major", "contiguous"):
        torch.manual_seed(0)
        full_w, full_g = torch.randn(3, 4), torch.randn(3, 4)
        w = torch.nn.Parameter(distribute_tensor(full_w, mesh, [Shard(0)]))
        g = full_g[:2] if rank == 0 else full_g[2:]
        if layout == "column_major":
            g = g.t().contiguous().t()
        w.grad = DTensor.from_local(g, mesh, [Shard(0)], shape=(3, 4), stride=(4, 1))
        LARS([w], lr=0.1, weight_decay=1e-2).step()
        out[layout] = w.full_tensor().clone()
    return out


# what each rank runs, part by part; a part that raises is recorded as {"error": traceback}
# so that the others still report (the tests of that part fail, or skip where the installed
# torch cannot run it on the CPU)
# case -> (CASES key, GradScaler's init_scale). At 2^80 the scaled gradients' squares pass
# float32's range: squared in float32, ||g|| was inf and LARS's ratio 0 (params frozen).
# LARS adapting on ||g|| alone (no weight decay, eps negligible) steps by lr * trust_coeff *
# ||p|| * g / ||g||, whatever g's scale: gradients of ~1e-24 (a loss times 1e-24) train as
# those of the plain loss, if ||g|| is not 0. Sharded, the norms were combined over the
# ranks as float32 squares: an unscaled norm under ~4e-23 squared to 0, and r was 1.
SCALED_ONLY = {"lars-adapt": (LARS, dict(lr=0.1, momentum=0.9, weight_decay=0.0,
                                         always_adapt=True, eps=1e-30))}
# case -> (CASES or SCALED_ONLY key, GradScaler's init_scale, factor of the loss)
SCALED_CASES = {"lars": ("lars", 2.0 ** 8, 1.0), "lamb-clip": ("lamb-clip", 2.0 ** 8, 1.0),
                "lars, scale 2^80": ("lars", 2.0 ** 80, 1.0),
                "lars adapting, loss 1e-24, scale 2^40": ("lars-adapt", 2.0 ** 40, 1e-24)}
PARTS = {
    "fsdp": lambda rank: {c: _train_fsdp(c, rank) for c in CASES},
    "ddp": lambda rank: {c: _train_ddp(c, rank) for c in ("sgd-nesterov", "lamb-clip", "lars")},
    "tp": lambda rank: {c: _train_tp(c, rank) for c in CASES},
    "tp_clip": _clip_tp,
    "clip": lambda rank: {"2": _clip(rank, 2.0), "inf": _clip(rank, float("inf")),
                          "3-checked": _clip(rank, 3.0, error_if_nonfinite=True),
                          "0": _clip(rank, 0.0)},
    "swapped": _storage_swapped,
    "resume": _resume,
    "compiled": lambda rank: {c: _compiled(c, rank) for c in ("adamw", "lamb-clip", "lars-clip")},
    "aot": lambda rank: {b: _compiled_by(b, "lamb-clip", rank) for b in ("inductor", "aot_eager")},
    "partial": _partial_refused,
    "partial_grads": _partial_grads,
    "layout_on_one_rank": _layout_on_one_rank,
    "loss_scaler": lambda rank: _scaler_skip(rank, "loss_scaler"),
    "loss_scaler_unscale": lambda rank: _scaler_skip(rank, "loss_scaler_unscale"),
    "grad_scaler": lambda rank: _scaler_skip(rank, "grad_scaler"),
    "scaled": lambda rank: {c: train_scaled(c, rank) for c in SCALED_CASES},
    "master": lambda rank: {c: train_master(c, rank) for c in MASTER_CASES},
}


# FSDP2 over tensor parallelism on a (dp, tp) = (2, 2) mesh: four ranks
WORLD_2D = 4
CASES_2D = ("adamw", "lamb-clip", "lars")


def _fsdp_tp_model():
    """Layer 0 column-wise and layer 2 row-wise over tp, then every param sharded over dp:
    placements (_StridedShard(0), Shard(0)), (Shard(0), Shard(1)) and (Shard(0), Replicate()).
    _StridedShard's is_shard() is False (torch 2.14): its dp shards had been left out of
    every norm. Returns the model and the rank's dp index (its half of each batch)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = parallelize_module(make_model(), mesh["tp"], {"0": ColwiseParallel(),
                                                          "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    return model, mesh["dp"].get_local_rank()


def _train_fsdp_tp(case: str) -> dict:
    cls, kwargs = CASES[case]
    model, dp = _fsdp_tp_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, batches(), dp)
    stats = opt.last_stats()
    return {"params": [p.full_tensor().detach().clone() for p in model.parameters()],
            "stats": None if stats is None else stats.values.clone(),
            "placements": [str(p.placements) for p in model.parameters()]}


def clip_single() -> dict:
    """torch's clip_grad_norm_ of the first batch's gradients in one process."""
    x, y = batches()[0]
    model = make_model()
    F.mse_loss(model(x), y).backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    return {"total": total, "grads": [p.grad.clone() for p in model.parameters()]}


def _clip_fsdp_tp() -> dict:
    """(torch's own refuses these gradients: layer 4's live on the dp mesh, the others' on
    the dp x tp mesh)"""
    x, y = batches()[0]
    model, dp = _fsdp_tp_model()
    F.mse_loss(model(rows(x, dp)), rows(y, dp)).backward()
    total = fastdyn.clip_grad_norm_(model.parameters(), 0.05)
    return {"total": _full(total).clone(),
            "grads": [p.grad.full_tensor().clone() for p in model.parameters()]}


def _scaler_fsdp_tp(rank: int) -> dict:
    """An inf in rank 0's local shard of layer 0's weight (_StridedShard over dp) only."""
    x, y = batches()[0]
    model, dp = _fsdp_tp_model()
    opt = LAMB(model.parameters(), lr=1e-2)
    scaler = LossScaler("cpu", init_scale=2.0 ** 8)
    scaler.scale(F.mse_loss(model(rows(x, dp)), rows(y, dp))).backward()
    if rank == 0:
        model[0].weight.grad.to_local().view(-1)[0] = float("inf")
    before = [p.to_local().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    return {"kept": all(torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters())),
            "scale": scaler.get_scale()}


PARTS_2D = {
    "fsdp_tp": lambda rank: {c: _train_fsdp_tp(c) for c in CASES_2D},
    "fsdp_tp_clip": lambda rank: _clip_fsdp_tp(),
    "fsdp_tp_scaler": _scaler_fsdp_tp,
}


def worker(rank: int, out_dir: str, world: int = WORLD, parts: str = "main") -> None:
    # a collective that one rank never joins (it raised) fails after this, instead of gloo's
    # default of 30 minutes
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        result = {}
        for name, run in {"main": PARTS, "2d": PARTS_2D}[parts].items():
            try:
                result[name] = run(rank)
            except Exception:
                result[name] = {"error": traceback.format_exc()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
