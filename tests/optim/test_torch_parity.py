"""fastdyn.optim.Adam / AdamW / SGD against torch.optim itself: 50 steps, several param
groups, every flag, float and tensor lr, within fp32 rounding."""

import copy
import itertools

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES, INTERPRETED
from optim.models import mlp, mlp_loss, regression_data

STEPS = 50
# 50 steps of fp32 arithmetic that differs from torch's only in rounding (lerp vs
# b1*m+(1-b1)*g, fused vs separate multiplies): differences stay near 1e-6.
RTOL, ATOL = 1e-4, 1e-5


def groups(model, hyper_list):
    params = list(model.parameters())
    return [dict(params=params[i::len(hyper_list)], **h) for i, h in enumerate(hyper_list)]


def run_pair(ours_cls, torch_cls, defaults, group_hypers, backend, device, tensor_lr=False,
             steps=None):
    # Triton's interpreter takes ~0.2 s a step; the same kernels get 50 steps on a GPU.
    steps = steps or (5 if (backend == "triton" and INTERPRETED) else STEPS)
    model = mlp().to(device)
    twin = copy.deepcopy(model)
    if tensor_lr:
        defaults = dict(defaults, lr=torch.tensor(defaults["lr"]))
    ours = ours_cls(groups(model, group_hypers), **defaults)
    theirs = torch_cls(groups(twin, group_hypers), **copy.deepcopy(defaults))
    data = tuple(t.to(device) for t in regression_data())
    with use_backend(backend):
        for _ in range(steps):
            for m, o in ((model, ours), (twin, theirs)):
                o.zero_grad()
                mlp_loss(m, data).backward()
                o.step()
    return model, twin, ours, theirs


def assert_models_close(a, b):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL, msg=lambda m: f"{n}: {m}")


ADAM_FLAGS = list(itertools.product([False, True], [False, True], [0.0, 0.05]))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad,maximize,wd", ADAM_FLAGS)
def test_adam_matches_torch(backend, device, cls, amsgrad, maximize, wd):
    defaults = dict(lr=3e-3, betas=(0.85, 0.995), eps=1e-7, weight_decay=wd, amsgrad=amsgrad,
                    maximize=maximize)
    hypers = [{}, dict(lr=1e-3, betas=(0.9, 0.999)), dict(weight_decay=0.2)]
    m1, m2, _, _ = run_pair(getattr(fastdyn.optim, cls), getattr(torch.optim, cls), defaults,
                            hypers, backend, device)
    assert_models_close(m1, m2)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_adam_tensor_lr_matches_torch(backend, device):
    m1, m2, ours, _ = run_pair(fastdyn.optim.AdamW, torch.optim.AdamW, dict(lr=2e-3), [{}, {}],
                               backend, device, tensor_lr=True)
    assert_models_close(m1, m2)


SGD_FLAGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
             dict(momentum=0.9, dampening=0.5), dict(momentum=0.5, weight_decay=1e-2),
             dict(momentum=0.9, maximize=True, weight_decay=1e-3, lr=1e-3)]  # ascent: keep it finite


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("flags", SGD_FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_sgd_matches_torch(backend, device, flags):
    defaults = {"lr": 0.05, **flags}
    hypers = [{}, dict(lr=0.01)]
    m1, m2, ours, theirs = run_pair(fastdyn.optim.SGD, torch.optim.SGD, defaults, hypers, backend, device)
    assert_models_close(m1, m2)
    if flags["momentum"]:
        for p, q in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(ours.state[p]["momentum_buffer"],
                                       theirs.state[q]["momentum_buffer"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD"])
def test_state_dict_layout_matches_torch(cls):
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1, amsgrad=True)
    m1, m2, ours, theirs = run_pair(getattr(fastdyn.optim, cls), getattr(torch.optim, cls), kw,
                                    [{}], "native", "cpu", steps=2)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for key in a["state"][k]:
            assert a["state"][k][key].dtype == b["state"][k][key].dtype, key
            assert a["state"][k][key].shape == b["state"][k][key].shape, key
    ours = set(a["param_groups"][0])
    if cls != "SGD" and "decoupled_weight_decay" not in b["param_groups"][0]:
        ours.discard("decoupled_weight_decay")  # fastdyn takes it on torch 2.6 too, torch's Adam not
    assert ours == set(b["param_groups"][0])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_first_step_state_matches_torch_to_rounding(backend, device, cls):
    """One step from zero state: exp_avg = (1-b1) g and exp_avg_sq = (1-b2) g^2, with 1 - b
    rounded once from double as torch's single-tensor Adam does. Computed as 1 - 0.999f in
    float32 (0.00099998713), exp_avg_sq was 1.3e-5 (relative) off torch's."""
    _, _, ours, theirs = run_pair(getattr(fastdyn.optim, cls), getattr(torch.optim, cls),
                                  dict(lr=1e-3, foreach=False), [{}], backend, device, steps=1)
    for a, b in zip(ours.state.values(), theirs.state.values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[key], b[key], rtol=3e-7, atol=0, msg=key)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("name,kw", [("Adam", {}), ("AdamW", dict(weight_decay=0.0)),
                                     ("SGD", dict(momentum=0.9)), ("SGD", {})])
def test_an_inf_param_without_weight_decay_stays_inf_as_in_torch(backend, device, name, kw):
    """torch leaves the weight-decay term out at weight_decay 0; the kernels added 0 * p,
    which is NaN for an inf param: the param and its state went NaN where torch keeps the
    param inf and the state finite (a gradient overflow had made it inf)."""
    inf = float("inf")
    results = []
    for cls in (getattr(fastdyn.optim, name), getattr(torch.optim, name)):
        p = torch.nn.Parameter(torch.tensor([1.0, inf, -inf], device=device))
        opt = cls([p], lr=0.1, **kw)
        for _ in range(2):
            p.grad = torch.ones(3, device=device)
            with use_backend(backend if cls.__module__.startswith("fastdyn") else None):
                opt.step()
        results.append([p.detach().cpu()] + [t.cpu() for t in opt.state[p].values()
                                             if t.dim() > 0])
    for ours, theirs in zip(*results):
        assert torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours.isinf(), theirs.isinf())
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.skipif(torch.__version__ < "2.11", reason="torch 2.6's AdamW (2.11 checked) makes the params NaN here; fastdyn keeps them inf as newer torch does")
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_adamw_without_weight_decay_takes_an_infinite_lr_as_torch(backend, device):
    """1 - lr * weight_decay at lr = inf and weight_decay 0 is NaN: the native step made every
    param NaN where torch (which skips the decay at 0) moves them to -inf/+inf."""
    results = []
    for cls in (fastdyn.optim.AdamW, torch.optim.AdamW):
        p = torch.nn.Parameter(torch.tensor([1.0, -1.0], device=device))
        opt = cls([p], lr=float("inf"), weight_decay=0.0)
        p.grad = torch.tensor([1.0, -1.0], device=device)
        with use_backend(backend if cls is fastdyn.optim.AdamW else None):
            opt.step()
        results.append(p.detach().cpu())
    assert torch.equal(*results), results
