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


def _one_step_away(model, loaded, lr):
    """Largest move of a param from `loaded` (its values before one step)."""
    return max(float((p.float() - q.float()).abs().max()) for p, q in zip(model.parameters(), loaded))


def test_master_weights_follow_a_param_through_fp32_and_back():
    """bf16 with master weights, then model.float() for 5 steps, then bf16 again: the master
    kept from the first bf16 step came back as the param's value and undid the fp32 steps.
    A param that leaves 16 bits drops its master; back in 16 bits it gets a new one."""
    model = mlp(dtype=torch.bfloat16)
    opt = fastdyn.optim.SGD(model.parameters(), lr=0.1, master_weights=True)
    data = regression_data()
    train(model, opt, mlp_loss, tuple(t.bfloat16() for t in data), steps=1)
    model.float()
    train(model, opt, mlp_loss, data, steps=5)
    assert all("master_param" not in opt.state[p] for p in model.parameters())
    model.bfloat16()
    loaded = [p.detach().clone() for p in model.parameters()]
    train(model, opt, mlp_loss, tuple(t.bfloat16() for t in data), steps=1)
    assert _one_step_away(model, loaded, 0.1) < 0.05


def test_masters_loaded_without_master_weights_are_dropped_at_load():
    """A master-weights checkpoint loaded by an optimizer without them and saved again before
    any step (a conversion, a frozen param that never steps) leaves the masters out: kept,
    they would be stale once the params move elsewhere (the step drops them too, but a param
    without gradients never steps)."""
    model = mlp(dtype=torch.bfloat16)
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=True)
    train(model, opt, mlp_loss, tuple(t.bfloat16() for t in regression_data()), steps=1)
    sd = copy.deepcopy(opt.state_dict())
    assert all("master_param" in st for st in sd["state"].values())
    other = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    other.load_state_dict(sd)
    assert all("master_param" not in other.state[p] for p in model.parameters())
    assert all("master_param" not in st for st in other.state_dict()["state"].values())
    assert all(st["exp_avg"].dtype == torch.bfloat16 for st in other.state_dict()["state"].values())


@pytest.mark.parametrize("via", ["fastdyn_without_masters", "torch"])
def test_a_checkpoint_trained_on_elsewhere_does_not_bring_back_its_masters(via):
    """A master-weights checkpoint trained on by an optimizer that does not keep masters
    (fastdyn's without them, or torch.optim's, which carries the unknown key unchanged),
    then resumed with master weights: the stale masters had become the params' values at
    the first step (a jump back to the first checkpoint, 20 steps lost). Without master
    weights fastdyn drops them; loaded ones give way where their rounding is not the param."""
    data = tuple(t.bfloat16() for t in regression_data())
    model = mlp(dtype=torch.bfloat16)
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=True)
    train(model, opt, mlp_loss, data, steps=3)
    first = [p.detach().clone() for p in model.parameters()]
    sd = copy.deepcopy(opt.state_dict())
    other = fastdyn.optim.AdamW(model.parameters(), lr=1e-2) if via != "torch" \
        else torch.optim.AdamW(model.parameters(), lr=1e-2)
    other.load_state_dict(sd)
    train(model, other, mlp_loss, data, steps=20)
    sd = copy.deepcopy(other.state_dict())
    if via != "torch":
        assert all("master_param" not in st for st in sd["state"].values())
    loaded = [p.detach().clone() for p in model.parameters()]
    assert _one_step_away(model, first, 1e-2) > 0.05  # (20 steps moved it)
    resumed = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=True)
    resumed.load_state_dict(sd)
    train(model, resumed, mlp_loss, data, steps=1)
    assert _one_step_away(model, loaded, 1e-2) < 0.02


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True)])
def test_a_load_pre_hook_s_state_dict_is_the_one_loaded(dtype, master):
    """register_load_state_dict_pre_hook: the state dict a hook returns is loaded, and the
    hook runs once. fastdyn set aside the fp32 state of the dict it was given before
    torch ran the hooks, and put it back over theirs (bf16 params with master weights)."""
    model = torch.nn.Linear(4, 3).to(dtype)
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=master)
    model(torch.randn(2, 4, dtype=dtype)).float().sum().backward()
    opt.step()
    calls = []

    def hook(optimizer, state_dict):
        calls.append(optimizer)
        state_dict = copy.deepcopy(state_dict)
        for st in state_dict["state"].values():
            st["exp_avg"].zero_()
            st["exp_avg_sq"].fill_(3.0)
        return state_dict

    resumed = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=master)
    resumed.register_load_state_dict_pre_hook(hook)
    resumed.load_state_dict(opt.state_dict())
    assert calls == [resumed]
    for p in model.parameters():
        assert not resumed.state[p]["exp_avg"].any()
        assert torch.equal(resumed.state[p]["exp_avg_sq"], torch.full_like(p, 3.0, dtype=torch.float32))
        assert not opt.state[p]["exp_avg_sq"].eq(3.0).all()  # (the hook's copy, not the original)


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True)])
def test_a_load_post_hook_sees_and_keeps_the_loaded_state(dtype, master):
    """register_load_state_dict_post_hook runs last, on the state as loaded: with fp32
    moments and master weights of bf16 params it ran inside torch's loader, saw them cast
    to bf16, and what it wrote was then replaced by the fp32 state set aside."""
    model = torch.nn.Linear(4, 3).to(dtype)
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=master)
    model(torch.randn(2, 4, dtype=dtype)).float().sum().backward()
    opt.step()
    seen = []

    def hook(optimizer):
        for st in optimizer.state.values():
            seen.append(st["exp_avg"].dtype)
            st["exp_avg"].zero_()
            if master:
                st["master_param"].fill_(7.0)

    resumed = fastdyn.optim.AdamW(model.parameters(), lr=1e-2, master_weights=master)
    resumed.register_load_state_dict_post_hook(hook)
    resumed.load_state_dict(opt.state_dict())
    assert seen == [torch.float32] * 2
    for p in model.parameters():
        assert not resumed.state[p]["exp_avg"].any()
        if master:
            assert resumed.state[p]["master_param"].eq(7.0).all()


def test_tensor_betas_given_to_lamb_are_read_once_at_construction():
    """As Adam's: LAMB kept them, and read beta2 with float() at every step (a host sync a
    step on a GPU)."""
    model = torch.nn.Linear(4, 3)
    opt = fastdyn.optim.LAMB(model.parameters(), betas=(torch.tensor(0.8), torch.tensor(0.9)))
    assert all(type(b) is float for b in opt.param_groups[0]["betas"])


def test_tensor_betas_of_a_torch_checkpoint_are_read_once_at_load():
    """torch's Adam takes tensor betas; a step that read them with float() each time would
    sync the host every step on a GPU (and break a fullgraph compile)."""
    model = torch.nn.Linear(4, 3)
    theirs = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(torch.tensor(0.8), torch.tensor(0.9)))
    model(torch.randn(2, 4)).sum().backward()
    theirs.step()
    ours = fastdyn.optim.Adam(model.parameters(), lr=1e-2)
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["betas"] == (pytest.approx(0.8), pytest.approx(0.9))
    assert all(type(b) is float for b in ours.param_groups[0]["betas"])
    ours.step()
