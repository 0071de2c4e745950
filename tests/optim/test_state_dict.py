"""Exact resume, and state dicts that interchange with torch.optim both ways."""

import copy
import io

import pytest
import torch

import fastdyn
from optim.models import mlp, mlp_loss, regression_data, train

ALL = {
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=1e-2),
    "SGD": dict(lr=0.05, momentum=0.9, dampening=0.1),
    "LAMB": dict(lr=1e-2, max_grad_norm=1.0),
    "LARS": dict(lr=0.5, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("master", [False, True])
def test_resume_is_bitwise_exact(name, master):
    dtype = torch.bfloat16 if master else torch.float32
    cls = getattr(fastdyn.optim, name)
    data = tuple(t.to(dtype) for t in regression_data())
    n, k = 12, 5

    straight = mlp(dtype=dtype)
    opt = cls(straight.parameters(), master_weights=master, **ALL[name])
    train(straight, opt, mlp_loss, data, n)

    resumed = mlp(dtype=dtype)
    opt = cls(resumed.parameters(), master_weights=master, **ALL[name])
    train(resumed, opt, mlp_loss, data, k)
    buf = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = mlp(seed=123, dtype=dtype)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt = cls(resumed.parameters(), master_weights=master, **ALL[name])
    opt.load_state_dict(saved["opt"])
    if master:
        # fp32 master weights and moments survive the round trip in fp32
        st = opt.state[next(resumed.parameters())]
        assert st["master_param"].dtype == torch.float32
    train(resumed, opt, mlp_loss, data, n - k)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("direction", ["torch->fastdyn", "fastdyn->torch"])
def test_state_dict_interchanges_with_torch(name, direction):
    kw = ALL[name]
    data = regression_data()
    src_cls, dst_cls = getattr(torch.optim, name), getattr(fastdyn.optim, name)
    if direction == "fastdyn->torch":
        src_cls, dst_cls = dst_cls, src_cls
    model = mlp()
    src = src_cls(model.parameters(), **kw)
    train(model, src, mlp_loss, data, 6)

    # continue with the source optimizer, and with the other one loaded from its state dict
    twin = copy.deepcopy(model)
    dst = dst_cls(twin.parameters(), **kw)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    train(model, src, mlp_loss, data, 6)
    train(twin, dst, mlp_loss, data, 6)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_adam_state_dict_loads_into_adamw_and_back():
    model = mlp()
    a = fastdyn.optim.Adam(model.parameters(), lr=1e-2)
    train(model, a, mlp_loss, regression_data(), 3)
    w = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    w.load_state_dict(a.state_dict())
    assert all(g["decoupled_weight_decay"] for g in w.param_groups)
    a2 = fastdyn.optim.Adam(model.parameters(), lr=1e-2)
    a2.load_state_dict(w.state_dict())
    train(model, a2, mlp_loss, regression_data(), 2)
