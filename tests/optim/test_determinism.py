"""Same inputs, same bits: every optimizer's step, its per-tensor statistics and the clipped
gradients come out identical in repeated runs on every backend (the reductions combine
per-chunk partials in a fixed order, no float atomics), and on the CPU whatever the number
of threads. Tensors span several chunks (CPU 32K, CUDA 64K, Triton 8K elements)."""

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES, rand_tensors

SIZES = [150_001, 3, 70_000, 1, 4096]
INTERPRETED_SIZES = [20_001, 3, 9_000, 1]  # Triton's interpreter is slow; still several 8K chunks
OPTS = {
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True),
    "LAMB": dict(lr=1e-2, max_grad_norm=0.5),
    "LARS": dict(lr=0.5, weight_decay=1e-3),
}


def _run(name, device, backend, steps=3):
    sizes = INTERPRETED_SIZES if (backend, device) == ("triton", "cpu") else SIZES
    params = [torch.nn.Parameter(t) for t in rand_tensors(sizes, torch.float32, device, seed=3)]
    opt = getattr(fastdyn.optim, name)(params, **OPTS[name], track_stats=True)
    with use_backend(backend):
        for k in range(steps):
            for p, g in zip(params, rand_tensors(sizes, torch.float32, device, seed=10 + k, scale=0.3)):
                p.grad = g
            total = fastdyn.clip_grad_norm_(params, 5.0)
            opt.step()
    return [p.detach().clone() for p in params] + [opt.last_stats().values.clone(), total,
                                                   *[p.grad.clone() for p in params]]


def _assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y) or (x.isnan().equal(y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num()))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("name", list(OPTS))
def test_repeated_runs_give_the_same_bits(name, backend, device):
    first = _run(name, device, backend)
    _assert_same_bits(first, _run(name, device, backend))


@pytest.mark.parametrize("name", list(OPTS))
def test_cpu_bits_do_not_depend_on_thread_count(name):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(name, "cpu", "native")
        torch.set_num_threads(max(2, threads))
        many = _run(name, "cpu", "native")
    finally:
        torch.set_num_threads(threads)
    _assert_same_bits(one, many)


TRACKED = {
    "Adam-L2": ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    "AdamW-master": ("AdamW", dict(lr=1e-2, master_weights=True)),
    "SGD-master": ("SGD", dict(lr=0.05, momentum=0.9, master_weights=True)),
    "LARS-scaled": ("LARS", dict(lr=0.5, weight_decay=1e-3)),
    "LAMB-clip": ("LAMB", dict(lr=1e-2, max_grad_norm=0.5)),
}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("case", list(TRACKED))
def test_track_stats_does_not_change_the_step(case, backend, device):
    """A monitoring flag must not change training: with track_stats the CPU kernels ran
    another loop, which GCC compiled with other fused multiply-adds (1 ulp off in Adam's
    moments with L2 decay, masters of 16-bit params, LARS under a loss scale): the CPU
    code is built with -ffp-contract=off."""
    name, kw = TRACKED[case]
    dtype = torch.bfloat16 if kw.get("master_weights") else torch.float32
    sizes = INTERPRETED_SIZES if (backend, device) == ("triton", "cpu") else SIZES
    results = []
    for track in (False, True):
        params = [torch.nn.Parameter(t.to(dtype)) for t in rand_tensors(sizes, torch.float32, device, seed=3)]
        opt = getattr(fastdyn.optim, name)(params, **kw, track_stats=track)
        scaler = torch.amp.GradScaler(device, init_scale=256.0, enabled=case.endswith("scaled"))
        with use_backend(backend):
            for k in range(3):
                scaler.scale(torch.ones((), device=device))  # (what sets its scale)
                for p, g in zip(params, rand_tensors(sizes, torch.float32, device, seed=10 + k)):
                    p.grad = (g * scaler.get_scale() if scaler.is_enabled() else g).to(dtype)
                scaler.step(opt)
                scaler.update()
        results.append([p.detach().clone() for p in params]
                       + [t.clone() for p in params for _, t in sorted(opt.state[p].items())])
    _assert_same_bits(*results)
