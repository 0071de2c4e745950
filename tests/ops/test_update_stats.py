"""The stats every update op fills on request (track_stats): grad norm (unscaled), param
norm before the step, update norm, trust ratio; checked against norms computed here from
the tensors before and after, for the kernels and the reference alike."""

import pytest
import torch

from fastdyn import reference
from fastdyn.ops import use_backend
from fastdyn.ops.registry import for_device
from helpers import BACKEND_DEVICES, supports

SIZES = (5, 70, 1)
GRAD_SCALE = 4.0


def _args(name, device, dtype):
    g = torch.Generator().manual_seed(1)
    lists = lambda positive=False: [  # noqa: E731
        (lambda t: t.abs() if positive else t)(torch.randn(n, generator=g, dtype=torch.float64))
        .to(dtype).to(device) for n in SIZES]
    steps = [torch.tensor(2.0, device=device) for _ in SIZES]
    lr = torch.tensor(0.01, device=device)
    p, grads = lists(), lists()
    if name == "adam_":
        args = (p, grads, lists(), lists(True), [], [], steps, lr, 0.9, 0.999, 0.01, 1e-8,
                False, False, True)
    elif name == "sgd_":
        args = (p, grads, lists(), [], lr, 0.9, 0.0, 1e-4, True, False, False)
    elif name == "lamb_":
        args = (p, grads, lists(), lists(True), [], steps, lr, 0.9, 0.999, 1e-6, 0.01, True,
                True, True, False)
    else:
        args = (p, grads, lists(), [], lr, 0.9, 0.0, 1e-4, False, 0.001, 1e-8, True, False, False)
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
