"""What a torch.optim user relies on: groups, add_param_group, zero_grad, closures,
params without grads, schedulers, mixed dtypes per group, track_stats."""

import copy

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES
from optim.models import mlp, mlp_loss, regression_data, train


def test_closure_returns_loss_and_steps():
    model = mlp()
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    data = regression_data()

    def closure():
        opt.zero_grad()
        loss = mlp_loss(model, data)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(10):
        last = opt.step(closure).item()
    assert last < first


def test_params_without_grads_are_skipped():
    model = mlp()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    opt = fastdyn.optim.LAMB(model.parameters(), lr=1e-2)
    before = frozen.detach().clone()
    train(model, opt, mlp_loss, regression_data(), 3)
    assert torch.equal(frozen, before)
    assert frozen not in opt.state


def test_add_param_group_and_zero_grad():
    model = mlp()
    params = list(model.parameters())
    opt = fastdyn.optim.SGD(params[:2], lr=0.1, momentum=0.9)
    train(model, opt, mlp_loss, regression_data(), 2)
    opt.add_param_group({"params": params[2:], "lr": 0.01})
    assert opt.param_groups[1]["momentum"] == 0.9
    train(model, opt, mlp_loss, regression_data(), 2)
    assert all("momentum_buffer" in opt.state[p] for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params[:1]})


@pytest.mark.parametrize("sched", ["StepLR", "OneCycleLR", "CosineAnnealingLR", "ReduceLROnPlateau"])
def test_schedulers_work_unchanged(sched):
    model, twin = mlp(), mlp()
    ours = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    make = {
        "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5),
        "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
        "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 12),
        "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
    }[sched]
    s1, s2 = make(ours), make(theirs)
    data = regression_data()
    for i in range(12):
        for m, o, s in ((model, ours, s1), (twin, theirs, s2)):
            o.zero_grad()
            loss = mlp_loss(m, data)
            loss.backward()
            o.step()
            s.step(loss.item() * (1 + i % 2)) if sched == "ReduceLROnPlateau" else s.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_mixed_dtypes_in_one_group():
    a = torch.nn.Parameter(torch.randn(10))
    b = torch.nn.Parameter(torch.randn(10, dtype=torch.bfloat16))
    c = torch.nn.Parameter(torch.randn(10, dtype=torch.float64))
    opt = fastdyn.optim.Adam([a, b, c], lr=0.1)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    for p in (a, b, c):
        assert opt.state[p]["exp_avg"].dtype == p.dtype
        torch.testing.assert_close(p.grad.float(), torch.ones(10))  # grads untouched


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_float64_params_on_every_backend(backend, device, name):
    """float64 params train like torch's optimizer on every backend, clipping included (the
    Triton kernels compute in float32 and hand float64 calls to the float64 reference)."""
    kw = dict(lr=1e-2, weight_decay=1e-2) if name == "AdamW" else dict(lr=0.05, momentum=0.9)
    ours, theirs = mlp(dtype=torch.float64).to(device), mlp(dtype=torch.float64).to(device)
    o1 = getattr(fastdyn.optim, name)(ours.parameters(), **kw)
    o2 = getattr(torch.optim, name)(theirs.parameters(), **kw)
    data = tuple(t.to(device) for t in regression_data(dtype=torch.float64))
    with use_backend(backend):
        for _ in range(4):
            norms = []
            for m, o, clip in ((ours, o1, fastdyn.clip_grad_norm_),
                               (theirs, o2, torch.nn.utils.clip_grad_norm_)):
                o.zero_grad()
                mlp_loss(m, data).backward()
                # max_norm above the norm: coef 1 exactly, so float64 rounding is all that differs
                norms.append(clip(m.parameters(), 1e6))
                o.step()
            # fastdyn's norms are float32 (the contract)
            torch.testing.assert_close(norms[0].double(), norms[1], rtol=1e-7, atol=0)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_track_stats(max_grad_norm):
    """With clipping (the grads' norm is ~0.1-1) the ||g|| column used to be the clipped
    gradient's while grad_norm was the raw one: the rows now add up to grad_norm."""
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters(), lr=1e-2, track_stats=True,
                             max_grad_norm=max_grad_norm)
    assert opt.last_stats() is None
    train(model, opt, mlp_loss, regression_data(), 1)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, mlp_loss, regression_data(), 1)
    st = opt.last_stats()
    assert st.values.shape == (len(before), 4) and st.columns[0] == "grad_norm"
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(st.values[i, 1].double(), before[i].double().norm(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(st.values[i, 2].double(), (p - before[i]).double().norm(),
                                   rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(st.values[i, 0].double(), p.grad.double().norm(), rtol=1e-5, atol=1e-7)
    assert (st.values[:, 3] > 0).all()
    if max_grad_norm is not None:
        assert st.grad_norm > max_grad_norm * 1.5  # (clipping was active)
        torch.testing.assert_close(st.values[:, 0].double().norm(), st.grad_norm.double(),
                                   rtol=1e-5, atol=0)
    # a step without gradients has no stats, not the last step's
    opt.zero_grad()
    opt.step()
    assert opt.last_stats() is None


def test_stats_rows_carry_the_names_of_named_parameters():
    """Given `named_parameters()` (torch keeps "param_names" in each group) the stats rows
    are named in their own order (grouped by group and dtype, not the module's), and only
    params with gradients have a row: the names follow when the plan changes."""
    model = mlp()
    # a float64 param: a bucket of its own, after its group's float32 ones
    model[2].bias.data = model[2].bias.data.double()
    named = list(model.named_parameters())
    opt = fastdyn.optim.AdamW([{"params": named[:2]}, {"params": named[2:], "lr": 1e-3}],
                              lr=1e-2, track_stats=True)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    opt.step()
    assert opt.last_stats().names == ("0.weight",)
    for n, p in named:
        p.grad = torch.full_like(p, 2.0)
    opt.step()
    st = opt.last_stats()
    expected = {n: p for n, p in named}
    assert st.names == ("0.weight", "0.bias", "2.weight", "4.weight", "4.bias", "2.bias")
    assert [id(p) for p in st.params] == [id(expected[n]) for n in st.names]
    rows = st.named()
    assert list(rows) == list(st.names)
    for i, (n, row) in enumerate(rows.items()):
        assert set(row) == set(st.columns)
        assert row["grad_norm"] == pytest.approx(float(expected[n].grad.double().norm()), rel=1e-6)
        assert row["param_norm"] == st.values[i, 1].item()


def test_stats_named_by_the_model_without_param_names():
    """Plain params: no names on the rows; named(model) names them by identity, in the
    rows' order, and a param the model does not hold is "param{i}"."""
    model = mlp()
    stray = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = fastdyn.optim.LAMB([stray, *model.parameters()], lr=1e-2, track_stats=True)
    train(model, opt, mlp_loss, regression_data(), 1)  # (stray has no grad: no row)
    st = opt.last_stats()
    assert st.names == ()
    assert list(st.named(model)) == [n for n, _ in model.named_parameters()]
    mlp_loss(model, regression_data()).backward()
    stray.grad = torch.ones_like(stray)
    opt.step()
    st = opt.last_stats()
    rows = st.named(model)
    assert len(rows) == len(st.params) == len(list(model.parameters())) + 1
    stray_row = [i for i, p in enumerate(st.params) if p is stray][0]
    assert f"param{stray_row}" in rows
    assert rows[f"param{stray_row}"]["grad_norm"] == pytest.approx(3 ** 0.5)
    assert list(st.named()) == [f"param{i}" for i in range(len(st.params))]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("scaled", [False, True])
def test_lamb_clipping_stats_attribute_a_nonfinite_gradient(bad, scaled):
    """One layer's gradient inf or NaN under max_grad_norm: the ||g|| column shows it in
    that row and the others' norms in theirs, for a monitor to name the layer (the column
    was ||g / clip|| * clip, 0 * inf = NaN in every row). Under GradScaler the step is
    skipped and its rows stay NaN."""
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters(), lr=1e-2, max_grad_norm=1.0, track_stats=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, enabled=scaled)
    scaler.scale(mlp_loss(model, regression_data())).backward()
    params = list(model.parameters())
    params[2].grad.view(-1)[0] = bad
    true = [p.grad.double().norm() / (4.0 if scaled else 1.0) for p in params]
    scaler.step(opt)
    st = opt.last_stats()
    if scaled:
        assert st.values.isnan().all()
        return
    for i, t in enumerate(true):
        if i == 2:
            assert not st.values[i, 0].isfinite()
        else:
            torch.testing.assert_close(st.values[i, 0].double(), t, rtol=1e-6, atol=0)


def test_optimizers_pickle_and_deepcopy():
    model = mlp()
    opt = fastdyn.optim.LARS(model.parameters(), lr=0.1, weight_decay=1e-4)
    train(model, opt, mlp_loss, regression_data(), 2)
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "LAMB", "LARS"])
def test_torch_optimizer_hooks_run(name):
    """torch.optim.Optimizer's step and state-dict hooks, which training frameworks hang
    logging and checkpoint conversion on, run around fastdyn's own step and state_dict."""
    model = mlp()
    opt = getattr(fastdyn.optim, name)(model.parameters(), lr=1e-2)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("step_pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("step_post"))
    opt.register_state_dict_pre_hook(lambda o: seen.append("state_dict_pre"))

    def tag(o, sd):
        seen.append("state_dict_post")
        sd["param_groups"][0]["tagged"] = True
        return sd

    opt.register_state_dict_post_hook(tag)
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))
    mlp_loss(model, regression_data()).backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["tagged"]
    opt.load_state_dict(sd)
    assert seen == ["step_pre", "step_post", "state_dict_pre", "state_dict_post", "load_pre",
                    "load_post"]


def _twin_params(n=2, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(4, dtype=dtype)) for _ in range(n)]
    return ps, [torch.nn.Parameter(p.detach().clone()) for p in ps]


def _grads(ps, k):
    for i, p in enumerate(ps):
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * k + i)).to(p.dtype)


@pytest.mark.parametrize("change", ["momentum on", "state cleared", "state replaced",
                                    "params swapped", "one param's state reset",
                                    "one param's state cleared", "buffer swapped",
                                    "buffer offloaded and back", "param swapped in the list",
                                    "group dict replaced"])
def test_changes_between_steps_are_seen_as_torch_sees_them(change):
    """The cached plan notices what torch's step would: a group's momentum turned on (its
    buffers then exist), the state cleared or replaced (steps start over), the params list of
    a group replaced by another of the same length; and objects swapped in: a state dict or
    buffer (offloaded and reloaded, reset), a param in the list, a group dict with another lr.
    The plan used to keep stepping the objects it held."""
    ours, theirs = _twin_params()
    fresh_ours, fresh_theirs = _twin_params(seed=1)
    kw = dict(lr=0.1, momentum=0.0 if change == "momentum on" else 0.9)
    o1, o2 = fastdyn.optim.SGD(ours, **kw), torch.optim.SGD(theirs, **kw)
    for k in range(4):
        for ps, o in ((ours, o1), (theirs, o2)):
            if k == 2:
                if change == "momentum on":
                    o.param_groups[0]["momentum"] = 0.9
                elif change == "state cleared":
                    o.state.clear()
                elif change == "state replaced":
                    o.state = type(o.state)(dict)
                elif change == "params swapped":
                    o.param_groups[0]["params"] = fresh_ours if o is o1 else fresh_theirs
                elif change == "one param's state reset":
                    o.state[ps[1]] = {}
                elif change == "one param's state cleared":
                    o.state[ps[1]].clear()
                elif change == "buffer swapped":
                    o.state[ps[0]]["momentum_buffer"] = torch.full((4,), 3.0)
                elif change == "buffer offloaded and back":
                    st = o.state[ps[0]]
                    st["momentum_buffer"] = st["momentum_buffer"].to("meta")  # offloaded
                    st["momentum_buffer"] = torch.full((4,), -1.0)  # and reloaded
                elif change == "param swapped in the list":
                    o.param_groups[0]["params"][0] = (fresh_ours if o is o1 else fresh_theirs)[0]
                else:
                    o.param_groups[0] = {**o.param_groups[0], "lr": 0.5}
            _grads(o.param_groups[0]["params"], k)
            o.step()
    for p, q in zip(ours + fresh_ours, theirs + fresh_theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert len(o1.state) == len(o2.state)
    for p, q in zip(o1.param_groups[0]["params"], o2.param_groups[0]["params"]):
        assert o1.state[p].keys() == o2.state[q].keys()
        for key in o2.state[q]:
            torch.testing.assert_close(o1.state[p][key], o2.state[q][key], rtol=1e-6, atol=1e-7)


def test_sgd_without_momentum_holds_no_state():
    """torch's SGD without momentum has an empty state dict; fastdyn's held an empty entry
    per param, so its state_dict differed."""
    ours, theirs = _twin_params()
    o1, o2 = fastdyn.optim.SGD(ours, lr=0.1), torch.optim.SGD(theirs, lr=0.1)
    for ps, o in ((ours, o1), (theirs, o2)):
        _grads(ps, 0)
        o.step()
    assert o1.state_dict()["state"] == o2.state_dict()["state"] == {}


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_a_torch_checkpoint_loads_into_a_channels_last_model(name):
    """State saved from a contiguous model (torch's, or ours) loads into the same model made
    channels_last: the state takes the params' layout, as the kernels need; every step used
    to refuse it ("exp_avgs[0] has strides")."""
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    theirs = getattr(torch.optim, name)(conv.parameters(), **kw)
    conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
    theirs.step()
    conv.to(memory_format=torch.channels_last)
    ours = getattr(fastdyn.optim, name)(conv.parameters(), **kw)
    # (deep copies: a loaded state dict shares the tensors, which each step updates)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    twin = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    twin.load_state_dict(conv.state_dict())
    ref = getattr(torch.optim, name)(twin.parameters(), **kw)
    ref.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for model, opt in ((conv, ours), (twin, ref)):
        opt.zero_grad()
        model(torch.ones(2, 3, 8, 8)).square().mean().backward()
        opt.step()
    # fp32 arithmetic rounded differently from torch's (as in test_torch_parity): an update
    # of lr = 0.1 agrees to ~1e-6; the layout bug made every step an error
    for p, q in zip(conv.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6)


def test_deepcopy_and_pickle_keep_master_weights_and_track_stats():
    import io
    ps = [torch.nn.Parameter(torch.randn(8).half())]
    opt = fastdyn.optim.Adam(ps, lr=1e-3, master_weights=True, track_stats=True)
    _grads(ps, 0)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(opt), torch.load(buffer, weights_only=False)):
        assert other.master_weights and other.track_stats
        assert other.state[other.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.float32


def test_lamb_max_grad_norm_is_read_from_the_groups():
    """As any hyperparameter in torch: an edited (or loaded) group's max_grad_norm clips;
    it is one for all groups, so a group with another one is refused."""
    ours, theirs = _twin_params()
    clipped = fastdyn.optim.LAMB(ours, lr=0.1, weight_decay=0.0)
    reference = fastdyn.optim.LAMB(theirs, lr=0.1, weight_decay=0.0, max_grad_norm=1e-3)
    clipped.param_groups[0]["max_grad_norm"] = 1e-3
    for ps, o in ((ours, clipped), (theirs, reference)):
        _grads(ps, 0)
        for p in ps:
            p.grad.mul_(100)
        o.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="max_grad_norm is one for all groups"):
        reference.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                                   "max_grad_norm": 5.0})
    # an edit of a later group alone had been ignored (group 0's clipped): refused at the
    # step, which writes nothing
    reference.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    reference.param_groups[1]["max_grad_norm"] = 5.0
    before = [p.detach().clone() for p in theirs]
    with pytest.raises(ValueError, match="param group 1's 5.0 differs from the first group's 0.001"):
        reference.step()
    assert all(torch.equal(p, q) for p, q in zip(theirs, before))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "LAMB", "LARS"])
def test_a_step_between_forward_and_backward_is_refused_like_torch(backend, device, name):
    """A step changes weights the pending backward saved (a GAN's discriminator stepped
    before the generator's backward through it): torch's optimizers bump the params'
    versions and autograd refuses; fastdyn's used to let the backward use the new weights."""
    kw = {"momentum": 0.9} if name in ("SGD", "LARS") else {}
    torch_twin = getattr(torch.optim, name, None)
    for make in [lambda ps: getattr(fastdyn.optim, name)(ps, lr=1e-2, **kw)] + (
            [lambda ps: torch_twin(ps, lr=1e-2, **kw)] if torch_twin else []):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).to(device)
        opt = make(model.parameters())
        x = torch.randn(8, 4, device=device)
        model(x).sum().backward()
        pending = model(x).sum()  # the second layer's weight is saved for the first's grads
        with use_backend(backend):
            opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            pending.backward()


@pytest.mark.parametrize("name,change", [("AdamW", "channels_last"), ("SGD", "double"),
                                         ("LAMB", "channels_last")])
def test_a_param_given_new_storage_steps_like_torch_and_a_fresh_optimizer(name, change):
    """`model.to(...)` between steps keeps the Parameter objects and gives them new data: the
    plan used to keep the old layout's state (the next step raised, after earlier groups had
    stepped). It now matches torch's optimizer and one built fresh from the state dict."""
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    results = []
    for build in ("cached", "fresh", "torch"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 4 * 4, 2))
        cls = getattr(torch.optim if build == "torch" else fastdyn.optim, name, None)
        if cls is None:
            continue
        opt = cls(model.parameters(), **kw)
        x = torch.randn(2, 3, 5, 5)
        for k in range(3):
            if k == 1:
                model.to(memory_format=torch.channels_last) if change == "channels_last" \
                    else model.double()
                x = x.to(memory_format=torch.channels_last) if change == "channels_last" \
                    else x.double()
                if build == "fresh":
                    state = opt.state_dict()
                    opt = cls(model.parameters(), **kw)
                    opt.load_state_dict(state)
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for other in results[1:]:
        for p, q in zip(results[0], other):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class UserParameter(torch.nn.Parameter):
    """A Parameter subclass (FSDP1's FlatParameter is one)."""


@pytest.mark.parametrize("param_class", [torch.nn.Parameter, UserParameter])
def test_master_weights_appear_when_a_model_goes_to_float16_mid_training(param_class):
    """fp32 -> fp16 after a step with master_weights=True: the plan used to keep the fp32
    layout, so no master copy was made and updates below half an fp16 ulp were lost (and
    still were for a Parameter subclass, whose new memory the plan did not look at)."""
    p = param_class(torch.ones(4))
    opt = fastdyn.optim.SGD([p], lr=1e-4, master_weights=True)
    p.grad = torch.ones(4)
    opt.step()
    p.data = p.data.half()
    for _ in range(20):
        p.grad = torch.ones(4, dtype=torch.float16)
        opt.step()
    assert "master_param" in opt.state[p]
    assert p[0].item() < 0.9985  # 1 - 21e-4 = 0.9979; without a master copy it stayed 1.0


@pytest.mark.parametrize("name", ["AdamW", "SGD", "LAMB", "LARS"])
def test_a_step_under_fake_tensor_mode(name):
    """FakeTensorMode (memory estimates, tracing) steps on tensors without memory: the plan's
    memory check took their addresses for overlapping ones and refused every step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = torch.nn.Linear(4, 3)
        kw = dict(momentum=0.9) if name == "SGD" else {}
        opt = getattr(fastdyn.optim, name)(model.parameters(), lr=1e-3, **kw)
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        keys = {"momentum_buffer"} if name in ("SGD", "LARS") else {"exp_avg", "exp_avg_sq"}
        assert set(opt.state[model.weight]) >= keys


@pytest.mark.parametrize("name", ["AdamW", "SGD", "LAMB", "LARS"])
def test_a_step_and_clip_on_meta_params(name):
    """Params on the meta device (a model built under torch.device("meta") to plan memory):
    torch's optimizers and clip_grad_norm_ run on them, making meta state. fastdyn's ran the
    float64 reference there, whose host read of a scalar raised "Tensor.item() cannot be
    called on meta tensors"; meta now runs the fake kernels."""
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    kw = dict(momentum=0.9) if name == "SGD" else dict(max_grad_norm=1.0) if name == "LAMB" else {}
    opt = getattr(fastdyn.optim, name)(model.parameters(), lr=1e-3, **kw)
    total = fastdyn.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    assert total.device.type == "meta" and total.shape == ()
    keys = {"momentum_buffer"} if name in ("SGD", "LARS") else {"exp_avg", "exp_avg_sq"}
    state = opt.state[model.weight]
    assert set(state) >= keys and all(state[k].device.type == "meta" for k in keys)


def test_master_weights_switched_on_a_live_optimizer_take_effect_at_the_next_step():
    """opt.master_weights = True after some steps: the eager step kept its cached plan, and
    masters appeared only when something else rebuilt it (a compiled step applied it at
    once)."""
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = fastdyn.optim.AdamW([p], lr=1e-2)
    for _ in range(2):
        p.grad = torch.ones(4, dtype=torch.bfloat16)
        opt.step()
    assert "master_param" not in opt.state[p]
    opt.master_weights = True
    p.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["master_param"].dtype == torch.float32
    assert opt.state[p]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("name,kwargs", [
    ("AdamW", dict(lr=1e-2)), ("SGD", dict(lr=1e-2, momentum=0.9)), ("LAMB", dict(lr=1e-2)),
    ("LARS", dict(lr=0.5, weight_decay=1e-3)),
    ("AdamW", dict(lr=1e-2, master_weights=True, track_stats=True)),  # (bf16 params)
])
def test_params_stay_swappable_after_steps(name, kwargs):
    """The plan keeps C++ references to the optimizer's state (a GIL round trip a tensor
    fewer per op call) but never to the params: torch.utils.swap_tensors, which module.to()
    uses for tensor subclasses (and for every param under
    torch.__future__.set_swap_module_params_on_conversion), refuses a tensor referenced from
    C++ ("Expected use_count of t1 to be 1"). Swapped, the params train on."""
    dtype = torch.bfloat16 if kwargs.get("master_weights") else torch.float32
    model = mlp(dtype=dtype)
    opt = getattr(fastdyn.optim, name)(model.parameters(), **kwargs)
    data = regression_data(dtype=dtype)
    train(model, opt, mlp_loss, data, 2)
    ids = [id(p) for p in model.parameters()]
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.double().to(dtype)  # every param swapped twice, the Parameter objects kept
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    assert [id(p) for p in model.parameters()] == ids
    start = [p.detach().clone() for p in model.parameters()]
    train(model, opt, mlp_loss, data, 2)
    assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters()))
