"""fastdyn.optim.LAMB / LARS against the float64 contract references
(fastdyn.reference.LambReference / LarsReference) for every option."""

import copy
import itertools
import math

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from fastdyn.reference import LambReference, LarsReference
from helpers import BACKEND_DEVICES, INTERPRETED
from optim.models import mlp, mlp_loss, regression_data

LAMB_OPTIONS = [
    dict(),
    dict(max_grad_norm=0.05),          # clipping active (the grads' norm is ~0.1-1)
    dict(max_grad_norm=1e3),           # clipping inactive
    dict(weight_decay=0.0),
    dict(weight_decay=0.0, always_adapt=True),
    dict(trust_clip=True),
    dict(bias_correction=False),
    dict(grad_averaging=False),
    dict(trust_clip=True, max_grad_norm=0.1, bias_correction=False, grad_averaging=False),
    # the hyperparameters reach the kernels (not the defaults): each one alone, then together
    dict(betas=(0.8, 0.999)),
    dict(betas=(0.9, 0.99)),
    dict(eps=1e-3),                    # ~ sqrt(v) of the small gradients: it shapes u
    dict(betas=(0.8, 0.99), eps=1e-3, max_grad_norm=0.05),
]
# (the float32 and Triton runs: the defaults, clipping on and off, adapting without weight
# decay (compare's zero-gradient layer then has ||u|| = 0: Triton's ratio of it had gone
# untested), non-default hyperparameters)
LAMB_FLOAT32_OPTIONS = LAMB_OPTIONS[:3] + [dict(weight_decay=0.0, always_adapt=True)] + LAMB_OPTIONS[-1:]
LARS_OPTIONS = [
    dict(),
    dict(weight_decay=1e-3),
    dict(weight_decay=1e-3, trust_clip=True),
    dict(always_adapt=True),
    dict(weight_decay=1e-3, nesterov=True),
    dict(weight_decay=1e-3, dampening=0.3),
    dict(weight_decay=1e-3, momentum=0.0),
    # trust_coeff and eps reach the kernels (not the defaults 0.001, 1e-8); eps = 1e-3 is
    # ~1e-3 of the grads' norms, far above the float64 tolerance
    dict(weight_decay=1e-3, trust_coeff=0.02),
    dict(weight_decay=1e-3, eps=1e-3),
    dict(always_adapt=True, trust_coeff=0.02, eps=1e-3),
]


def compare(ours_cls, ref_cls, kw, backend, device, dtype, steps):
    model = mlp(dtype=dtype).to(device)
    ref_model = copy.deepcopy(model).double()
    # a zero tensor exercises the "norm is 0 -> r = 1" rule
    with torch.no_grad():
        model[0].bias.zero_()
        ref_model[0].bias.zero_()
    ours = ours_cls(model.parameters(), **kw)
    ref = ref_cls(ref_model.parameters(), **kw)
    x, y = (t.to(device) for t in regression_data())
    for _ in range(steps):
        for m, o, cast in ((model, ours, dtype), (ref_model, ref, torch.float64)):
            o.zero_grad()
            mlp_loss(m, (x.to(cast), y.to(cast))).backward()
            # a zero gradient: r = 1 where ||g|| is 0 (LARS) or ||u|| is (LAMB without weight
            # decay, whose m stays 0); a ratio of ||p|| / 0 had gone unseen
            m[4].bias.grad.zero_()
            with use_backend(backend if o is ours else None):
                o.step()
    return model, ref_model


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kw", LAMB_OPTIONS, ids=str)
def test_lamb_float64_matches_contract(backend, device, kw):
    if backend == "triton":
        pytest.skip("Triton's kernels are fp32; see test_lamb_float32_close_to_contract")
    model, ref = compare(fastdyn.optim.LAMB, LambReference, dict(lr=1e-2, **kw), backend, device,
                         torch.float64, steps=20)
    # (the global norm behind max_grad_norm is float64 for float64 grads: a float32 one put
    # the clipped updates ~1e-7 off)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kw", LAMB_FLOAT32_OPTIONS, ids=str)
def test_lamb_float32_close_to_contract(backend, device, kw):
    steps = 3 if (backend == "triton" and INTERPRETED) else 20
    model, ref = compare(fastdyn.optim.LAMB, LambReference, dict(lr=1e-2, **kw), backend, device,
                         torch.float32, steps=steps)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.double().cpu(), q.cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kw", LARS_OPTIONS, ids=str)
def test_lars_matches_contract(backend, device, kw):
    dtype = torch.float32 if backend == "triton" else torch.float64
    steps = 3 if (backend == "triton" and INTERPRETED) else 20
    model, ref = compare(fastdyn.optim.LARS, LarsReference, dict(lr=0.5, **kw), backend, device,
                         dtype, steps=steps)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.double().cpu(), q.cpu(), **tol)


def _two_step(cls, kw, grads, backend, device, dtype):
    """Two steps of `cls` on the 2-element param [3, 4] (||p|| = 5) with the given grads."""
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=dtype, device=device))
    opt = cls([p], **kw)
    with use_backend(backend):
        for g in grads:
            p.grad = torch.tensor(g, dtype=dtype, device=device)
            opt.step()
    return p.detach().double().cpu()


WORKED_TOL = {torch.float64: dict(rtol=1e-13, atol=1e-14), torch.float32: dict(rtol=2e-6, atol=2e-6)}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("max_grad_norm", [None, 0.1])
def test_lamb_worked_example(backend, device, max_grad_norm):
    """The contract's LAMB steps written out on two elements with Python floats (no tensor
    code shared with fastdyn or its references): the drop-in reproduces them."""
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-6, 0.01
    grads = [[0.5, -0.25], [0.125, 0.75]]
    p, m, v = [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, 1):
        if max_grad_norm is not None:  # step 1: g <- g / max(G / max_grad_norm, 1)
            G = math.hypot(*g)
            g = [x / max(G / max_grad_norm, 1.0) for x in g]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]          # step 2
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        u = [(mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + eps) + wd * pi
             for mi, vi, pi in zip(m, v, p)]                             # steps 3-4
        r = math.hypot(*p) / math.hypot(*u)                              # step 5
        p = [pi - lr * r * ui for pi, ui in zip(p, u)]                   # step 6
    kw = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, max_grad_norm=max_grad_norm)
    for dtype in (torch.float64, torch.float32):
        if dtype == torch.float64 and backend == "triton":
            continue  # (Triton's kernels are fp32)
        got = _two_step(fastdyn.optim.LAMB, kw, grads, backend, device, dtype)
        torch.testing.assert_close(got, torch.tensor(p, dtype=torch.float64), **WORKED_TOL[dtype])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_worked_example(backend, device, nesterov):
    """The contract's LARS step written out with Python floats, as test_lamb_worked_example:
    the trust ratio, then torch's SGD momentum (buf = d at the first step)."""
    lr, momentum, wd, tc, eps = 0.5, 0.9, 0.1, 0.001, 1e-8
    grads = [[0.6, 0.8], [-0.3, 1.5]]
    p, buf = [3.0, 4.0], None
    for g in grads:
        pn, gn = math.hypot(*p), math.hypot(*g)
        r = tc * pn / (gn + wd * pn + eps)
        d = [(gi + wd * pi) * r for gi, pi in zip(g, p)]
        buf = d if buf is None else [momentum * bi + di for bi, di in zip(buf, d)]
        step = [di + momentum * bi for di, bi in zip(d, buf)] if nesterov else buf
        p = [pi - lr * si for pi, si in zip(p, step)]
    kw = dict(lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov, trust_coeff=tc, eps=eps)
    for dtype in (torch.float64, torch.float32):
        if dtype == torch.float64 and backend == "triton":
            continue
        got = _two_step(fastdyn.optim.LARS, kw, grads, backend, device, dtype)
        torch.testing.assert_close(got, torch.tensor(p, dtype=torch.float64), **WORKED_TOL[dtype])


def test_lamb_defaults_match_contract():
    import inspect
    sig = inspect.signature(fastdyn.optim.LAMB)
    expected = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                    grad_averaging=True, max_grad_norm=None, trust_clip=False, always_adapt=False)
    for k, v in expected.items():
        assert sig.parameters[k].default == v, k
    for k in ("bias_correction", "grad_averaging", "max_grad_norm", "trust_clip", "always_adapt"):
        assert sig.parameters[k].kind == inspect.Parameter.KEYWORD_ONLY


def test_lars_defaults_match_contract():
    import inspect
    sig = inspect.signature(fastdyn.optim.LARS)
    expected = dict(lr=1.0, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                    trust_coeff=0.001, eps=1e-8, trust_clip=False, always_adapt=False)
    for k, v in expected.items():
        assert sig.parameters[k].default == v, k
    for k in ("trust_coeff", "eps", "trust_clip", "always_adapt"):
        assert sig.parameters[k].kind == inspect.Parameter.KEYWORD_ONLY


def test_lamb_never_modifies_grads():
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters(), lr=1e-2, max_grad_norm=0.01)
    mlp_loss(model, regression_data()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_lamb_state_keys():
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters())
    mlp_loss(model, regression_data()).backward()
    opt.step()
    for p in model.parameters():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        assert opt.state[p]["step"].item() == 1


def test_lars_state_keys():
    model = mlp()
    opt = fastdyn.optim.LARS(model.parameters(), lr=0.1)
    mlp_loss(model, regression_data()).backward()
    opt.step()
    for p in model.parameters():
        assert set(opt.state[p]) == {"momentum_buffer"}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kw", [dict(weight_decay=1e-2, trust_clip=True),
                                dict(weight_decay=0.0, always_adapt=True)], ids=str)
def test_lars_keeps_a_nan_trust_ratio_and_an_inf_param_as_the_reference(backend, device, kw):
    """An inf param: its trust ratio is inf/inf = NaN, which trust_clip's `r < 1 ? r : 1`
    turned into 1 (the NaN hidden from the rest of the tensor); with weight decay 0 the
    direction added 0 * inf = NaN where the reference leaves the term out."""
    results = []
    for cls in (fastdyn.optim.LARS, LarsReference):
        p = torch.nn.Parameter(torch.tensor([float("inf"), 1.0, 2.0], device=device,
                                            dtype=torch.float32 if cls is fastdyn.optim.LARS
                                            else torch.float64))
        opt = cls([p], lr=0.5, **kw)
        p.grad = torch.ones_like(p)
        with use_backend(backend if cls is fastdyn.optim.LARS else None):
            opt.step()
        results.append(p.detach().double().cpu())
    ours, ref = results
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf()), \
        (ours, ref)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("trust_clip", [False, True])
def test_lamb_keeps_a_nan_trust_ratio_of_an_inf_param_as_the_reference(backend, device, trust_clip):
    """An inf param with weight decay: ||p|| = ||u|| = inf, r = NaN, and every element of the
    tensor becomes NaN, as in the reference; trust_clip's min(r, 1) keeps the NaN (written
    `r <= 1 ? r : 1` it makes r 1 and leaves the other elements finite: the inf hidden from
    the step's result; scripts/mutants.py X4)."""
    results = []
    for cls in (fastdyn.optim.LAMB, LambReference):
        p = torch.nn.Parameter(torch.tensor([float("inf"), 1.0, 2.0], device=device,
                                            dtype=torch.float32 if cls is fastdyn.optim.LAMB
                                            else torch.float64))
        opt = cls([p], lr=0.5, weight_decay=0.01, trust_clip=trust_clip)
        p.grad = torch.ones_like(p)
        with use_backend(backend if cls is fastdyn.optim.LAMB else None):
            opt.step()
        results.append(p.detach().double().cpu())
    ours, ref = results
    assert ref.isnan().all(), ref
    assert torch.equal(ours.isnan(), ref.isnan()), (ours, ref)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lamb_moves_an_element_whose_gradient_is_huge(backend, device):
    """|g| = 3e20: v = 9e37 is finite, v / bc2 is not. The Triton kernel took sqrt(v / bc2)
    and left the element where it was (u = m / inf = 0); sqrt(v) / sqrt(bc2) moves it."""
    results = []
    for cls in (fastdyn.optim.LAMB, LambReference):
        dtype = torch.float32 if cls is fastdyn.optim.LAMB else torch.float64
        p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.25], device=device, dtype=dtype))
        opt = cls([p], lr=0.01, weight_decay=0.0)
        for _ in range(2):
            p.grad = torch.tensor([3e20, 0.1, -0.2], device=device, dtype=dtype)
            with use_backend(backend if cls is fastdyn.optim.LAMB else None):
                opt.step()
        results.append(p.detach().double().cpu())
    torch.testing.assert_close(*results, rtol=1e-6, atol=1e-7)
    assert results[0][0] < 0.99  # (it stayed at 1.0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("scale", [2.0 ** 66, 2.0 ** 16])
def test_lars_trust_ratio_under_a_large_loss_scale(backend, device, scale):
    """Gradients scaled by S with grad_scale = S step as the unscaled ones. The Triton path
    squared S in float32: inf from 2^64, so ||g|| read 0 and the ratio 1 (plain SGD)."""
    results = []
    for s in (scale, None):
        p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.25], device=device))
        opt = fastdyn.optim.LARS([p], lr=0.5, weight_decay=1e-2)
        g = torch.tensor([1e-3, -2e-3, 5e-4], device=device)
        p.grad = g * s if s else g
        if s:
            opt.grad_scale, opt.found_inf = torch.tensor(s, device=device), torch.zeros((), device=device)
        with use_backend(backend):
            opt.step()
        results.append(p.detach().cpu())
    torch.testing.assert_close(*results, rtol=1e-6, atol=1e-8)
