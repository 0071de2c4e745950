"""lars_ against the float64 reference of the contract."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES, NOT_INTERPRETED
from ops.update_harness import assert_groups_close, hyper, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def lars_args(momentum, dampening, wd, nesterov, trust_clip, always_adapt, first, lr=0.5, **kw):
    def build(g):
        return ((g["params"], g["grads"], g["state0"] if momentum else [], g["master_params"],
                 torch.tensor(lr, device=g["params"][0].device), hyper(momentum, g["params"][0].device),
                 dampening, hyper(wd, g["params"][0].device), nesterov,
                 0.001, 1e-8, trust_clip, always_adapt, first), kw)
    return build


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), momentum=st.sampled_from([0.0, 0.9]),
       dampening=st.sampled_from([0.0, 0.1]), wd=st.sampled_from([0.0, 1e-4]),
       nesterov=st.booleans(), trust_clip=st.booleans(), always_adapt=st.booleans(),
       first=st.booleans(), master=st.booleans(), zero=st.sampled_from([None, "param", "grad"]))
def test_lars_matches_reference(backend, device, sizes, dtype, momentum, dampening, wd, nesterov,
                                trust_clip, always_adapt, first, master, zero):
    nesterov = nesterov and momentum > 0 and dampening == 0
    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=1, master=master, steps=False,
                       zero_param_index=0 if zero == "param" else None,
                       zero_grad_index=0 if zero == "grad" else None)
    ours, ref = run_both("lars_", backend, device,
                         lars_args(momentum, dampening, wd, nesterov, trust_clip, always_adapt,
                                   first), group)
    assert_groups_close(ours, ref, dtype, orig=group)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), momentum=st.sampled_from([0.0, 0.9]),
       wd=st.sampled_from([0.0, 1e-4]), always_adapt=st.booleans(), stats=st.booleans(),
       master=st.booleans())
def test_lars_with_given_trust_ratios_matches_reference(backend, device, sizes, dtype, momentum,
                                                        wd, always_adapt, stats, master):
    """The caller's ratios (the sharded step's path) replace the op's own, stats included."""
    _check_given_ratios(backend, device, sizes, dtype, momentum, wd, always_adapt, stats, master)


@pytest.mark.parametrize("backend,device", NOT_INTERPRETED)
def test_lars_with_given_trust_ratios_on_many_tiny_tensors(backend, device):
    """More tensors than one CUDA launch of LARS's 4 lists holds (656), empty ones among them:
    the ratio lookups and stats rows of a launch that is not the first."""
    sizes = [0 if i % 50 == 0 else 1 + i % 7 for i in range(800)]
    _check_given_ratios(backend, device, sizes, torch.float32, 0.9, 1e-4, False, True, False)


def _check_given_ratios(backend, device, sizes, dtype, momentum, wd, always_adapt, stats, master):
    from fastdyn import reference
    from fastdyn.ops import use_backend
    from fastdyn.ops.registry import for_device
    from ops.update_harness import clone_group

    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=1, master=master, steps=False)
    n = len(sizes)
    ratios = torch.linspace(0.5, 3.0, n, dtype=torch.float32, device=device)
    results = {}
    for who in ("ours", "ref"):
        g = results[who] = clone_group(group)
        st_ = torch.zeros(n, 4, device=device) if stats else None
        a, k = lars_args(momentum, 0.0, wd, False, False, always_adapt, False, stats=st_,
                         trust_ratios=ratios)(g)
        if who == "ours":
            with use_backend(backend):
                for_device("lars_", torch.device(device))(*a, **k)
        else:
            reference.lars_(*a, **k)
        results[who + "_stats"] = st_
    assert_groups_close(results["ours"], results["ref"], dtype, orig=group)
    if stats:
        ours, ref = results["ours_stats"].cpu(), results["ref_stats"].cpu()
        torch.testing.assert_close(ours, ref, rtol=2e-2 if dtype != torch.float32 else 1e-4,
                                   atol=1e-6)
        expected = ratios.cpu() if wd != 0 or always_adapt else torch.ones(n)
        torch.testing.assert_close(ours[:, 3], expected)


def test_lars_trust_ratios_are_checked():
    from fastdyn.ops import lars_

    group = make_group([3, 4], torch.float32, "cpu", buffers=1, steps=False)
    a, _ = lars_args(0.9, 0.0, 1e-4, False, False, False, False)(group)
    with pytest.raises(ValueError, match=r"trust_ratios must have shape \[2\]"):
        lars_(*a, trust_ratios=torch.ones(3))
    with pytest.raises(TypeError, match="trust_ratios must be floating point"):
        lars_(*a, trust_ratios=torch.ones(2, dtype=torch.int32))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_lars_eps_and_trust_coeff_reach_the_trust_ratio(backend, device, dtype, eps):
    """Gradients of ~1e-9 (||g|| ~ 1e-8, as eps = 1e-8) and of ~1e-4 (||g|| ~ 1e-3, as eps =
    1e-3), trust_coeff 0.02: the trust ratio tc ||p|| / (||g|| + eps) is far from the one
    without eps (or with the default trust_coeff). The ratio the op records (stats column 3)
    against the float64 formula, and the update against the reference."""
    from fastdyn import reference
    from fastdyn.ops import use_backend
    from fastdyn.ops.registry import for_device
    from ops.update_harness import clone_group

    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels are float32")
    sizes = [3, 100]
    group = make_group(sizes, dtype, device, buffers=1, steps=False)
    gscale = 1e-8 if eps == 1e-8 else 1e-3
    group["grads"] = [g * gscale for g in group["grads"]]  # (make_group's grads are ~0.1)
    tc, wd = 0.02, 0.0
    results = {}
    for who in ("ours", "ref"):
        g = results[who] = clone_group(group)
        stats = results[who + "_stats"] = torch.zeros(len(sizes), 4, device=device)
        args = (g["params"], g["grads"], g["state0"], [], torch.tensor(0.5, device=device),
                hyper(0.9, device), 0.0, hyper(wd, device), False, tc, eps, False, True, False)
        if who == "ours":
            with use_backend(backend):
                for_device("lars_", torch.device(device))(*args, stats=stats)
        else:
            reference.lars_(*args, stats=stats)
    assert_groups_close(results["ours"], results["ref"], dtype, orig=group)
    pn = torch.stack([p.double().cpu().norm() for p in group["params"]])
    gn = torch.stack([g.double().cpu().norm() for g in group["grads"]])
    expected = tc * pn / (gn + wd * pn + eps)
    assert ((tc * pn / gn) / expected > 1.3).all()  # eps matters here: a third of the ratio
    for who in ("ours", "ref"):
        torch.testing.assert_close(results[who + "_stats"][:, 3].double().cpu(), expected,
                                   rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lars_takes_the_norm_of_huge_scaled_grads_unscaled(backend, device):
    """Grads scaled by 2^62 (a scale grown for long on small grads): each square fits
    float32 (~2e35) but their sum over 4,096 elements does not; the trust ratio is the
    unscaled grads' (the Triton path summed the scaled squares into float32: an inf ||g||,
    a ratio of 0, and the params did not move)."""
    scale = 2.0 ** 62
    group = make_group([4096, 5], torch.float32, device, buffers=1, steps=False)
    group["grads"] = [g * scale for g in group["grads"]]  # exact: a power of two
    build = lars_args(0.9, 0.0, 1e-4, False, False, False, True,
                      grad_scale=torch.tensor(scale, device=device))
    ours, ref = run_both("lars_", backend, device, build, group)
    assert_groups_close(ours, ref, torch.float32, orig=group)
    assert not torch.equal(ours["params"][0], group["params"][0])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lars_takes_the_norm_of_grads_whose_scaled_squares_pass_float32(backend, device, dtype):
    """A loss scale of 2^80 (GradScaler's after ~130k steps from 2^16 with no inf, as under
    bf16 autocast) on gradients of ~0.1: each scaled square (~1e46) is past float32's range.
    Squared in float, ||g|| was inf and the ratio 0 on every backend (the params frozen, no
    found_inf); the squares are in float64 now. Sizes across the CUDA/CPU chunk and lane
    blocks."""
    scale = 2.0 ** 80
    group = make_group([4096 + 3, 17, 1], dtype, device, buffers=1, steps=False)
    group["grads"] = [g * scale for g in group["grads"]]  # exact: a power of two
    assert all(float((g.float() ** 2).max()) == math.inf for g in group["grads"])
    build = lars_args(0.9, 0.0, 1e-4, False, False, False, True,
                      grad_scale=torch.tensor(scale, device=device))
    ours, ref = run_both("lars_", backend, device, build, group)
    assert_groups_close(ours, ref, dtype, orig=group)
    assert not torch.equal(group["params"][0], ours["params"][0])  # r = 0 left it


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lars_takes_the_norm_of_tiny_unscaled_grads_from_their_scaled_squares(backend, device):
    """Gradients of ~1e-24 under a loss scale of 2^40 (e.g. a layer that barely learns): the
    scaled squares (~1e-24) are normal floats, the unscaled ones (~1e-48) are below float32's
    range. ||g|| is the scaled grads' norm unscaled in float64 on every backend, so the ratio
    adapts as the reference's does (CUDA had squared the unscaled grads in float32, Triton
    had rounded the unscaled sum of squares to float32: ||g|| = 0, r = 1)."""
    scale = 2.0 ** 40
    group = make_group([4096, 5], torch.float32, device, buffers=1, steps=False)
    group["grads"] = [g * 1e-24 * scale for g in group["grads"]]  # as a scaler leaves them
    build = lars_args(0.9, 0.0, 1e-4, False, False, False, True,
                      grad_scale=torch.tensor(scale, device=device))
    ours, ref = run_both("lars_", backend, device, build, group)
    assert_groups_close(ours, ref, torch.float32, orig=group)
    # the ratio adapted: trust_coeff * ||p|| / (||g|| + wd * ||p|| + eps) ~ 10, not 1, and
    # the step is r * lr * (g + wd * p), ~ r * lr * wd * p here
    p0 = group["params"][0]
    moved = (p0 - ours["params"][0]).abs().max()
    assert float(moved) > 5 * 0.5 * 1e-4 * float(p0.abs().max())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("case", ["lr 0 with trust_clip", "NaN param without weight decay"])
def test_lars_reference_agrees_with_the_kernels_where_ieee_matters(backend, device, case):
    """The float64 reference divided r by lr in Python floats (ZeroDivisionError at lr = 0,
    where the kernels' r / 0 = inf clips to 1) and added 0 * p without weight decay (a NaN
    param element made the momentum buffer NaN there; the kernels and torch's SGD leave the
    term out)."""
    import fastdyn
    from fastdyn import reference
    from fastdyn.ops import use_backend

    def run(which):
        p = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
        if case == "NaN param without weight decay":
            p[0] = float("nan")
        g = torch.tensor([0.1, -0.2, 0.3, 0.0], device=device)
        buf = torch.zeros(4, device=device)
        lr = 0.0 if case == "lr 0 with trust_clip" else 0.1
        args = ([p], [g], [buf], [], torch.tensor(lr, device=device), hyper(0.9, device), 0.0,
                hyper(0.0, device), False, 0.001, 1e-8, case == "lr 0 with trust_clip", True, False)
        if which == "reference":
            reference.lars_(*args)
        else:
            with use_backend(which):
                fastdyn.ops.lars_(*args)
        return p, buf

    ours, ref = run(backend), run("reference")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("first", [True, False], ids=["first", "later"])
def test_lars_without_adaptation_is_sgd_to_the_bit(backend, device, dtype, first):
    """weight_decay 0 and not always_adapt: d = g, then SGD's momentum. The LARS optimizer then
    runs sgd_ (lars_, its weight_decay a device tensor, would take its norms on a GPU for
    nothing): the params, buffers and stats must be lars_'s bits."""
    from fastdyn.ops import use_backend
    from fastdyn.ops.registry import for_device

    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=gen).to(dtype).to(device) for n in (1, 37, 70001)]
    grads = [torch.randn(p.shape, generator=gen).to(dtype).to(device) for p in ps]
    bufs = [torch.randn(p.shape, generator=gen).to(dtype).to(device) for p in ps]
    runs = {}
    for name in ("lars_", "sgd_"):
        p, b = [t.clone() for t in ps], [t.clone() for t in bufs]
        stats = torch.zeros(len(ps), 4, device=device)
        head = (p, grads, b, [], torch.tensor(0.1, device=device), hyper(0.9, device), 0.1,
                hyper(0.0, device), False)
        tail = (0.001, 1e-8, False, False, first) if name == "lars_" else (False, first)
        with use_backend(backend):
            for_device(name, torch.device(device))(
                *head, *tail, grad_scale=torch.tensor(4.0, device=device), stats=stats)
        runs[name] = p + b + [stats]
    assert all(torch.equal(x, y) for x, y in zip(runs["lars_"], runs["sgd_"]))
    assert not torch.equal(runs["sgd_"][2], ps[2])  # (it stepped)
