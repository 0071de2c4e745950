"""The stats every update op fills on request (track_stats): grad norm (unscaled), param
norm before the step, update norm, trust ratio; checked against norms computed here from
the tensors before and after, for the kernels and the reference alike."""

import pytest
import torch

from fastdyn import reference
from fastdyn.ops import use_backend
from fastdyn.ops.registry import for_device
from helpers import BACKEND_DEVICES, supports
from ops.update_harness import hyper

SIZES = (5, 70, 1)
GRAD_SCALE = 4.0


def _args(name, device, dtype):
    g = torch.Generator().manual_seed(1)
    lists = lambda positive=False: [  # noqa: E731
        (lambda t: t.abs() if positive else t)(torch.randn(n, generator=g, dtype=torch.float64))
        .to(dtype).to(device) for n in SIZES]
    steps = [torch.tensor(2.0, device=device) for _ in SIZES]
    lr = torch.tensor(0.01, device=device)
    b1 = hyper(0.9, device)
    p, grads = lists(), lists()
    if name == "adam_":
        args = (p, grads, lists(), lists(True), [], [], steps, lr, b1, 0.999, hyper(0.01, device), 1e-8,
                False, False, True)
    elif name == "sgd_":
        args = (p, grads, lists(), [], lr, b1, 0.0, hyper(1e-4, device), True, False, False)
    elif name == "lamb_":
        args = (p, grads, lists(), lists(True), [], steps, lr, b1, 0.999, 1e-6, hyper(0.01, device),
                True, True, True, False)
    else:
        args = (p, grads, lists(), [], lr, b1, 0.0, hyper(1e-4, device), False, 0.001, 1e-8, True,
                False, False)
    return args


def _run(fn, name, device, dtype):
    args = _args(name, device, dtype)
    params, grads = args[0], args[1]
    before = [t.clone() for t in params]
    stats = torch.full((len(SIZES), 4), float("nan"), device=device)
    fn(*args, grad_scale=torch.tensor(GRAD_SCALE, device=device), stats=stats)
    expected = torch.tensor([
        [torch.linalg.vector_norm(gr.double() / GRAD_SCALE),
         torch.linalg.vector_norm(b.double()),
         torch.linalg.vector_norm(p.double() - b.double())]
        for gr, b, p in zip(grads, before, params)])
    return stats.cpu(), expected


@pytest.mark.parametrize("name", ["adam_", "sgd_", "lamb_", "lars_"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_stats_are_the_norms_of_the_step(backend, device, dtype, name):
    """float64 params had their reference stats taken after the store: update norm 0."""
    if not supports(backend, dtype):
        pytest.skip(f"{backend} has no {dtype} kernels")
    # the update norm of the tensors' stored values differs from the kernel's in-register
    # one by the rounding of p (ulp(1) / update 1e-2: ~1e-5 in float32)
    rtol = 1e-5 if dtype == torch.float64 else 1e-4
    with use_backend(backend):
        ours, expected = _run(for_device(name, torch.device(device)), name, device, dtype)
    ref, ref_expected = _run(getattr(reference, name), name, device, dtype)
    torch.testing.assert_close(ours[:, :3].double(), expected, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(ref[:, :3].double(), ref_expected, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=1e-7)
    assert (expected[:, 2] > 0).all()



@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_update_norm_at_an_infinite_lr_is_inf(backend, device):
    """lr = inf sends every element to +-inf: ||update|| is inf, as the stored change's (the
    Triton SGD kernel summed its masked tail lanes' 0 - inf * 0 = NaN into it)."""
    args = list(_args("sgd_", device, torch.float32))
    args[4] = torch.tensor(float("inf"), device=device)  # lr
    stats = torch.full((len(SIZES), 4), float("nan"), device=device)
    with use_backend(backend):
        for_device("sgd_", torch.device(device))(*args, stats=stats)
    assert args[0][1].isinf().all()
    assert stats[:, 2].isinf().all(), stats


def _with_masters(args, name):
    """args with fp32 master copies of the params in the op's master_params slot, and the
    state in fp32 (as the ops require with masters); (args, masters)."""
    slot = {"adam_": 5, "sgd_": 3, "lamb_": 4, "lars_": 3}[name]
    state = {"adam_": (2, 3), "sgd_": (2,), "lamb_": (2, 3), "lars_": (2,)}[name]
    args = list(args)
    args[slot] = [p.float() for p in args[0]]
    for k in state:
        args[k] = [t.float() for t in args[k]]
    return args, args[slot]


def _update_norms_and_changes(fn, name, device, dtype, masters):
    """(stats' ||update||, norms of the change of the held values as stored), float64."""
    args = _args(name, device, dtype)
    held = args[0]
    if masters:
        args, held = _with_masters(args, name)
    before = [t.double() for t in held]
    stats = torch.full((len(SIZES), 4), float("nan"), device=device)
    fn(*args, grad_scale=torch.tensor(GRAD_SCALE, device=device), stats=stats)
    change = torch.stack([torch.linalg.vector_norm(a.double() - b) for a, b in zip(held, before)])
    return stats[:, 2].cpu().double(), change.cpu()


@pytest.mark.parametrize("masters", [False, True], ids=["no_masters", "masters"])
@pytest.mark.parametrize("name", ["adam_", "sgd_", "lamb_", "lars_"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_update_norm_of_16_bit_params_is_the_change_made(backend, device, dtype, name, masters):
    """||update|| is the change of the value the step holds, as stored: a 16-bit param
    without a master loses to rounding what is under half its spacing (bf16 near 1: 2^-8),
    and the stats say what moved, not what the step meant (a stagnating layer shows).
    With masters it is the fp32 master's change."""
    with use_backend(backend):
        ours, ours_change = _update_norms_and_changes(for_device(name, torch.device(device)),
                                                      name, device, dtype, masters)
    ref, ref_change = _update_norms_and_changes(getattr(reference, name), name, device, dtype,
                                                masters)
    # float32 sums of squares of exact differences; LAMB with masters reports lr * r * ||u||,
    # which differs from the stored fp32 change by p's rounding (ulp 1e-7 / update 1e-2)
    rtol = 1e-4 if masters and name == "lamb_" else 1e-5
    torch.testing.assert_close(ours, ours_change, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(ref, ref_change, rtol=rtol, atol=1e-7)
    assert (ours_change > 0).any()
    if not masters:
        # the step the ops meant (the same one on fp32 masters) is not the one a 16-bit param
        # took: a kernel that reported the unrounded update fails the assertions above
        _, meant = _update_norms_and_changes(getattr(reference, name), name, device, dtype, True)
        assert ((meant - ours_change).abs() > 10 * rtol * meant).any()
