"""Mixed precision: torch.amp.GradScaler and fastdyn.amp.LossScaler drive the optimizers;
an inf/NaN gradient leaves params, state and step counts bit-identical; training goes on
after the backoff; LossScaler's scale grows and backs off like GradScaler's."""

import copy
import pickle

import pytest
import torch

import fastdyn
from fastdyn.amp import LossScaler
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES
from optim.models import mlp, mlp_loss, regression_data

OPTS = {
    "Adam": dict(lr=1e-2),
    "AdamW": dict(lr=1e-2, amsgrad=True),
    "SGD": dict(lr=0.05, momentum=0.9),
    "LAMB": dict(lr=1e-2, max_grad_norm=1.0),
    "LAMB-noclip": dict(lr=1e-2),
    "LARS": dict(lr=0.5, weight_decay=1e-3),
}


def make(name, model, **extra):
    cls = getattr(fastdyn.optim, name.split("-")[0])
    return cls(model.parameters(), **OPTS[name], **extra)


def snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            copy.deepcopy({k: v for k, v in opt.state_dict()["state"].items()}))


def assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        for key in a[1][k]:
            assert torch.equal(a[1][k][key], b[1][k][key]), key


def poison(model):
    next(model.parameters()).grad[0, 0] = float("inf")


def scaler_for(kind, device, **kw):
    kw = {"init_scale": 2.0 ** 10, "growth_interval": 2, **kw}
    return (torch.amp.GradScaler if kind == "GradScaler" else LossScaler)(device, **kw)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
@pytest.mark.parametrize("name", list(OPTS))
def test_inf_step_is_skipped_bit_for_bit_and_training_continues(backend, device, kind, name):
    model = mlp().to(device)
    opt = make(name, model)
    scaler = scaler_for(kind, device)
    data = tuple(t.to(device) for t in regression_data())
    with use_backend(backend):
        for _ in range(2):
            opt.zero_grad()
            scaler.scale(mlp_loss(model, data)).backward()
            scaler.step(opt)
            scaler.update()
        before = snapshot(model, opt)
        scale_before = scaler.get_scale()
        opt.zero_grad()
        scaler.scale(mlp_loss(model, data)).backward()
        poison(model)
        scaler.step(opt)
        scaler.update()
        assert_same(before, snapshot(model, opt))
        assert scaler.get_scale() == scale_before / 2
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = mlp_loss(model, data)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
    after = snapshot(model, opt)
    assert not torch.equal(after[0][0], before[0][0])
    assert losses[-1] < losses[0]


DAMPENED = {"SGD": dict(lr=0.05, momentum=0.9, dampening=0.5),
            "LARS": dict(lr=0.5, weight_decay=1e-3, dampening=0.5)}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("track_stats", [False, True])
@pytest.mark.parametrize("name", list(DAMPENED))
def test_skipped_first_step_leaves_the_first_step_ahead(backend, device, name, track_stats):
    """With dampening the first step sets buf = d, not momentum*0 + (1-dampening)*d, and the
    host cannot know whether found_inf skipped it. A run whose first and fourth steps are
    skipped ends bit for bit where the run without them does (the scale is a power of two:
    unscaling is exact), statistics included."""
    cls = getattr(fastdyn.optim, name)
    scaled, plain = mlp().to(device), mlp().to(device)
    o1 = cls(scaled.parameters(), **DAMPENED[name], track_stats=track_stats)
    o2 = cls(plain.parameters(), **DAMPENED[name], track_stats=track_stats)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10, growth_interval=10 ** 6)
    data = tuple(t.to(device) for t in regression_data())
    with use_backend(backend):
        for i in range(6):
            o1.zero_grad()
            scaler.scale(mlp_loss(scaled, data)).backward()
            if i in (0, 3):
                poison(scaled)
            scaler.step(o1)
            scaler.update()
            if i in (0, 3):
                if track_stats:
                    assert o1.last_stats().values.isnan().all()
                continue
            o2.zero_grad()
            mlp_loss(plain, data).backward()
            o2.step()
            if track_stats:
                assert torch.equal(o1.last_stats().values, o2.last_stats().values)
    assert scaler.get_scale() == 2.0 ** 8
    for p, q in zip(scaled.parameters(), plain.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(o1.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"])


def _torch_sgd_twin_run(cls, kind, steps=4):
    """Two params, a skipped first step (inf), then steps where p1 has no grad at step 1
    ("absent"), or a checkpoint reload / deepcopy after the skipped step. Returns params and
    momentum buffers."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    opt = cls(ps, **DAMPENED["SGD"])
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    for k in range(steps):
        if k == 1 and kind == "reload":
            sd, ssd = copy.deepcopy(opt.state_dict()), scaler.state_dict()
            opt = cls(ps, **DAMPENED["SGD"])
            opt.load_state_dict(sd)
            scaler = torch.amp.GradScaler("cpu")
            scaler.load_state_dict(ssd)
        if k == 1 and kind == "deepcopy":
            ps, opt = copy.deepcopy((ps, opt))
        w = torch.randn(4, generator=torch.Generator().manual_seed(k))
        if k == 0:
            w[0] = float("inf")
        for p in ps:
            p.grad = None
        used = ps[:1] if (kind == "absent" and k == 1) else ps
        scaler.scale(sum((p * w).sum() for p in used)).backward()
        scaler.step(opt)
        scaler.update()
    return ps, [opt.state[p].get("momentum_buffer") for p in ps]


@pytest.mark.parametrize("kind", ["absent", "reload", "deepcopy"])
@pytest.mark.parametrize("name", ["SGD", "LARS"])
def test_first_step_still_ahead_survives_absence_checkpoints_and_copies(name, kind):
    """After a skipped first step, the buffers' first step (buf = d) stays ahead for a param
    that had no grad at the next step, across state_dict/load_state_dict (the unstarted
    buffer is left out of the state dict, as torch has none) and across deepcopy. LARS with
    weight_decay 0 is SGD: both against torch.optim.SGD."""
    ours, our_bufs = _torch_sgd_twin_run(getattr(fastdyn.optim, name), kind)
    theirs, their_bufs = _torch_sgd_twin_run(torch.optim.SGD, kind)
    for p, q, a, b in zip(ours, theirs, our_bufs, their_bufs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_state_dict_leaves_out_buffers_before_their_first_step():
    """... and its post-hooks see the dict as returned, last (they saw the buffers left out
    after them, and one returning a wrapped dict made state_dict() raise KeyError)."""
    ps = [torch.nn.Parameter(torch.randn(3))]
    opt = fastdyn.optim.SGD(ps, **DAMPENED["SGD"])
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(sd["state"]) or {"optimizer": sd})
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(ps[0].sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert "momentum_buffer" in opt.state[ps[0]]  # zeros on the device, not started
    assert opt.state_dict()["optimizer"]["state"] == {} and seen == [{}]
    opt.zero_grad()
    scaler.scale(ps[0].sum()).backward()
    scaler.step(opt)
    assert set(opt.state_dict()["optimizer"]["state"][0]) == {"momentum_buffer"}


def test_lamb_without_clipping_checks_for_inf_once_under_loss_scaler():
    """LossScaler's inf check is one read of the gradients: found_inf counts one, not two."""
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters(), lr=1e-2)
    scaler = LossScaler("cpu", init_scale=2.0 ** 4)
    scaler.scale(mlp_loss(model, regression_data())).backward()
    poison(model)
    scaler.step(opt)
    assert scaler.found_inf(opt).item() == 1.0


# A scale of 2^80 (GradScaler's after ~130k steps from 2^16 without an inf, as under bf16
# autocast) squares the scaled gradients past float32's range: LARS's ||g|| and LAMB's
# clipping norm were inf there (LARS's ratio 0, LAMB's clipped step 0), silently.
SCALES = [2.0 ** 8, 2.0 ** 80]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["Adam", "LAMB", "SGD", "LARS"])
def test_scaled_training_matches_unscaled(name, scale):
    """Unscaling inside the kernels gives the same step as unscaled gradients."""
    plain, scaled = mlp(), mlp()
    o1, o2 = make(name, plain), make(name, scaled)
    scaler = LossScaler("cpu", init_scale=scale, growth_interval=10 ** 6)
    data = regression_data()
    for _ in range(5):
        o1.zero_grad()
        mlp_loss(plain, data).backward()
        o1.step()
        o2.zero_grad()
        scaler.scale(mlp_loss(scaled, data)).backward()
        scaler.step(o2)
        scaler.update()
    assert scaler.get_scale() == scale  # no step skipped
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
def test_lamb_clipping_under_a_scaler_matches_unscaled(kind, scale):
    """max_grad_norm below the gradients' norm at every step: the scaled run unscales and
    clips in its kernels as the unscaled run clips. (Whenever a scaler handed the step a
    grad_scale, dropping the clip coefficient went unseen: the other LAMB runs under a
    scaler clip at 1.0, above these gradients' norm.)"""
    kw = dict(lr=1e-2, max_grad_norm=0.05)
    plain, scaled = mlp(), mlp()
    o1 = fastdyn.optim.LAMB(plain.parameters(), **kw)
    o2 = fastdyn.optim.LAMB(scaled.parameters(), **kw)
    scaler_cls = torch.amp.GradScaler if kind == "GradScaler" else LossScaler
    scaler = scaler_cls("cpu", init_scale=scale, growth_interval=10 ** 6)
    data = regression_data()
    for _ in range(5):
        o1.zero_grad()
        mlp_loss(plain, data).backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in plain.parameters()]))
        assert norm > 2 * kw["max_grad_norm"], norm  # the clipping is active
        o1.step()
        o2.zero_grad()
        scaler.scale(mlp_loss(scaled, data)).backward()
        scaler.step(o2)
        scaler.update()
    assert scaler.get_scale() == scale  # no step skipped
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# SGD with dampening, its first step skipped: torch's SGD under GradScaler skips on the host,
# so its buffer is created by the first step that runs, as ours is on the device
@pytest.mark.parametrize("name,kw,poisoned,steps", [("AdamW", dict(lr=1e-2), 3, 6),
                                                    ("SGD", DAMPENED["SGD"], 0, 5)])
def test_gradscaler_matches_torch_optimizer(name, kw, poisoned, steps):
    ours, theirs = mlp(), mlp()
    o1 = getattr(fastdyn.optim, name)(ours.parameters(), **kw)
    o2 = getattr(torch.optim, name)(theirs.parameters(), **kw)
    s1 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    s2 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    data = regression_data()
    for i in range(steps):
        for m, o, s in ((ours, o1, s1), (theirs, o2, s2)):
            o.zero_grad()
            s.scale(mlp_loss(m, data)).backward()
            if i == poisoned:
                poison(m)
            s.step(o)
            s.update()
    assert s1.get_scale() == s2.get_scale()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_loss_scaler_growth_backoff_and_state_dict():
    s = LossScaler("cpu", init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)
    g = torch.amp.GradScaler("cpu", init_scale=4.0, growth_factor=2.0, backoff_factor=0.25,
                             growth_interval=3)
    model, twin = mlp(), mlp()
    o1, o2 = fastdyn.optim.SGD(model.parameters(), lr=0.0), fastdyn.optim.SGD(twin.parameters(), lr=0.0)
    data = regression_data()
    for i in range(10):
        for m, o, sc in ((model, o1, s), (twin, o2, g)):
            o.zero_grad()
            sc.scale(mlp_loss(m, data)).backward()
            if i in (4, 5):
                poison(m)
            sc.step(o)
            sc.update()
        assert s.get_scale() == g.get_scale(), i
    state = s.state_dict()
    assert state.keys() == g.state_dict().keys()
    fresh = LossScaler("cpu")
    fresh.load_state_dict(g.state_dict())
    assert fresh.get_scale() == g.get_scale()
    g2 = torch.amp.GradScaler("cpu")
    g2.load_state_dict(state)
    assert g2.get_scale() == s.get_scale()


def _scaler_steps(scalers, poisoned, steps):
    """The same iterations under each scaler (one model and SGD(lr=0) each), a poisoned
    gradient at the steps in `poisoned`; the scalers' state dicts must agree after each."""
    runs = [(sc, mlp()) for sc in scalers]
    runs = [(sc, m, fastdyn.optim.SGD(m.parameters(), lr=0.0)) for sc, m in runs]
    data = regression_data()
    for i in range(steps):
        for sc, m, o in runs:
            o.zero_grad()
            sc.scale(mlp_loss(m, data)).backward()
            if i in poisoned:
                poison(m)
            sc.step(o)
            sc.update()
        first = runs[0][0].state_dict()
        for sc, _, _ in runs[1:]:
            assert sc.state_dict() == first, i


def test_loss_scaler_state_dict_is_gradscalers_after_skipped_steps():
    """The whole state dict, growth tracker included, equals GradScaler's after the same
    iterations (it used to be compared by keys and scale only)."""
    kw = dict(init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)
    s, g = LossScaler("cpu", **kw), torch.amp.GradScaler("cpu", **kw)
    _scaler_steps([s, g], poisoned=(4, 5), steps=10)
    state = s.state_dict()
    assert state == g.state_dict()
    # grown at step 2, backed off at 4 and 5, grown at 8 (three good steps after), one good
    # step since
    assert state == dict(scale=4.0 * 2.0 * 0.25 ** 2 * 2.0, growth_factor=2.0, backoff_factor=0.25,
                         growth_interval=3, _growth_tracker=1)
    assert s._get_growth_tracker() == 1


@pytest.mark.parametrize("used", [False, True])
def test_loss_scaler_loads_every_field_like_gradscaler(used):
    """A state dict with non-default factors, interval and growth tracker, loaded into a
    fresh scaler or one that has stepped already (its tracker at 1): the getters give it
    back, and the scale grows and backs off at the same steps as GradScaler's after loading
    the same dict."""
    loaded = dict(scale=8.0, growth_factor=3.0, backoff_factor=0.125, growth_interval=4,
                  _growth_tracker=2)
    s, g = LossScaler("cpu"), torch.amp.GradScaler("cpu")
    if used:
        _scaler_steps([s, g], poisoned=(), steps=1)
        assert s._get_growth_tracker() == 1
    s.load_state_dict(dict(loaded))
    g.load_state_dict(dict(loaded))
    assert (s.get_scale(), s.get_growth_factor(), s.get_backoff_factor(),
            s.get_growth_interval(), s._get_growth_tracker()) == (8.0, 3.0, 0.125, 4, 2)
    assert s.state_dict() == g.state_dict() == loaded
    # two good steps reach the interval (tracker 2 -> 4): x3; a bad one: x0.125; then the
    # tracker restarts from 0
    scales = []
    for poisoned, steps in (((), 1), ((), 1), ((0,), 1), ((), 3)):
        _scaler_steps([s, g], poisoned=poisoned, steps=steps)
        assert s.state_dict() == g.state_dict()
        scales.append(s.get_scale())
    assert scales == [8.0, 24.0, 3.0, 3.0]
    assert s._get_growth_tracker() == 3


@pytest.mark.parametrize("name", ["AdamW", "LAMB"])
def test_loss_scaler_unscale_then_clip_then_step(name):
    """last_grad_norm is unscale_'s, the norm before the caller's clipping, also after a
    step that measures the (clipped) gradients again (LAMB's max_grad_norm)."""
    model = mlp()
    opt = make(name, model)
    s = LossScaler("cpu", init_scale=2.0 ** 8)
    opt.zero_grad()
    s.scale(mlp_loss(model, regression_data())).backward()
    s.unscale_(opt)
    norm = fastdyn.clip_grad_norm_(model.parameters(), 0.01)
    assert norm > 0.1  # (it clipped)
    torch.testing.assert_close(norm, s.last_grad_norm, rtol=1e-5, atol=0)
    s.step(opt)
    torch.testing.assert_close(norm, s.last_grad_norm, rtol=1e-5, atol=0)
    assert s.found_inf(opt).item() == 0.0  # valid until update()
    s.update()
    with pytest.raises(RuntimeError, match="already been called"):
        s.unscale_(opt)
        s.unscale_(opt)


@pytest.mark.parametrize("poisoned", ["first", "second"])
@pytest.mark.parametrize("unscale_first", [False, True])
def test_two_optimizers_under_one_scaler_back_off_like_gradscaler(poisoned, unscale_first):
    """Two optimizers, one scaler (an encoder's and a head's): an inf in either one's
    gradients backs the scale off at update(), and only that optimizer's step is skipped,
    as under GradScaler (update() used to read the last optimizer's flag only)."""
    runs = []
    for kind in ("LossScaler", "GradScaler"):
        model = mlp()
        opts = [fastdyn.optim.AdamW(list(model.parameters())[:2], lr=1e-2),
                fastdyn.optim.SGD(list(model.parameters())[2:], lr=0.05, momentum=0.9)]
        runs.append((scaler_for(kind, "cpu", growth_interval=100), model, opts))
    data = regression_data()
    for sc, model, opts in runs:
        for o in opts:
            o.zero_grad()
        sc.scale(mlp_loss(model, data)).backward()
        params = list(model.parameters())
        params[0 if poisoned == "first" else 2].grad.view(-1)[0] = float("inf")
        before = [p.detach().clone() for p in params]
        for o in opts:
            if unscale_first:
                sc.unscale_(o)
            sc.step(o)
        sc.update()
        assert sc.get_scale() == 2.0 ** 9  # (init 2^10, backed off by half)
        moved = [not torch.equal(p, b) for p, b in zip(params, before)]
        assert moved == ([False, False, True, True, True, True] if poisoned == "first"
                         else [True, True, False, False, False, False])
    for p, q in zip(runs[0][1].parameters(), runs[1][1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_loss_scaler_with_a_torch_optimizer():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = LossScaler("cpu", init_scale=2.0 ** 8)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    s.scale(mlp_loss(model, regression_data())).backward()
    poison(model)
    s.step(opt)
    s.update()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert s.get_scale() == 2.0 ** 7


def test_loss_scaler_bad_arguments():
    with pytest.raises(ValueError, match="growth_factor"):
        LossScaler("cpu", growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler("cpu", backoff_factor=1.5)
    with pytest.raises(ValueError, match="growth_interval"):
        LossScaler("cpu", growth_interval=0)


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
def test_scaler_guards_like_gradscaler(kind):
    """A second step() before update() is refused; an optimizer only unscaled (its step
    skipped by the caller on an inf) still backs the scale off."""
    model = mlp()
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = scaler_for(kind, "cpu")
    scaler.scale(mlp_loss(model, regression_data())).backward()
    scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"step\(\) has already been called"):
        scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    scaler.scale(mlp_loss(model, regression_data())).backward()
    poison(model)
    scaler.unscale_(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 9


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
def test_scaler_pickles_between_iterations_like_gradscaler(kind):
    """A pickled (or deep-copied) scaler carries its scale and growth tracker and goes on as
    the original does; pickling between step() and update() is refused, as GradScaler does
    (an iteration's inf flags are keyed by optimizer ids that a copy would not match)."""
    model = mlp()
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = scaler_for(kind, "cpu")

    def iteration(scaler, poisoned=False):
        opt.zero_grad()
        scaler.scale(mlp_loss(model, regression_data())).backward()
        if poisoned:
            poison(model)
        scaler.step(opt)
        scaler.update()

    iteration(scaler, poisoned=True)   # backs off: 2**9
    iteration(scaler)                  # one good step: tracker 1
    copies = [pickle.loads(pickle.dumps(scaler)), copy.deepcopy(scaler)]
    for c in copies:
        assert (c.get_scale(), c._get_growth_tracker()) == (2.0 ** 9, 1)
    for s in (scaler, *copies):
        iteration(s)                   # the second good step grows the scale
        assert (s.get_scale(), s._get_growth_tracker()) == (2.0 ** 10, 0)

    opt.zero_grad()
    scaler.scale(mlp_loss(model, regression_data())).backward()
    scaler.step(opt)
    with pytest.raises(AssertionError, match="only be pickled at the beginning of an iteration"):
        pickle.dumps(scaler)
    scaler.update()
    assert pickle.loads(pickle.dumps(scaler)).get_scale() == scaler.get_scale()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_master_weights_train_low_precision_params(dtype):
    """With fp32 master weights, low-precision params follow the fp32 run closely; without
    them, small updates are lost to rounding."""
    ref = mlp()
    low = mlp(dtype=dtype)
    o_ref = fastdyn.optim.AdamW(ref.parameters(), lr=1e-3)
    o_low = fastdyn.optim.AdamW(low.parameters(), lr=1e-3, master_weights=True)
    x, y = regression_data()
    for _ in range(20):
        o_ref.zero_grad()
        mlp_loss(ref, (x, y)).backward()
        o_ref.step()
        o_low.zero_grad()
        mlp_loss(low, (x.to(dtype), y.to(dtype))).backward()
        o_low.step()
    st = o_low.state[next(low.parameters())]
    assert st["master_param"].dtype == torch.float32 and st["exp_avg"].dtype == torch.float32
    for p, q in zip(low.parameters(), o_low.param_groups[0]["params"]):
        assert torch.equal(p, o_low.state[q]["master_param"].to(dtype))
    for p, q in zip(ref.parameters(), low.parameters()):
        torch.testing.assert_close(q.float(), p, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_loss_scaler_skips_torch_fused_optimizers_on_inf(name):
    """torch's fused optimizers take grad_scale/found_inf as fastdyn's do, but do not check
    the gradients: LossScaler fills found_inf first (it used to leave it 0, and the inf
    reached the weights)."""
    results = []
    for kind in ("GradScaler", "LossScaler"):
        torch.manual_seed(0)
        model = mlp()
        opt = getattr(torch.optim, name)(model.parameters(), lr=0.1, fused=True)
        scaler = scaler_for(kind, "cpu")
        before = [p.detach().clone() for p in model.parameters()]
        scaler.scale(mlp_loss(model, regression_data())).backward()
        poison(model)
        scaler.step(opt)
        scaler.update()
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), kind
        results.append(scaler.get_scale())
        opt.zero_grad()
        scaler.scale(mlp_loss(model, regression_data())).backward()
        scaler.step(opt)  # a clean step goes through
        scaler.update()
        assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), kind
    assert results == [2.0 ** 9, 2.0 ** 9]


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
def test_scaler_misuse_is_refused_like_gradscaler(kind):
    model = mlp()
    opt = fastdyn.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = scaler_for(kind, "cpu")
    loss = mlp_loss(model, regression_data())
    loss.backward()
    for call in ("update", "unscale_", "step"):  # before any scale(): GradScaler's type and text
        with pytest.raises(AssertionError, match=f"Attempted {call} but _scale is None"):
            getattr(scaler, call)(*(() if call == "update" else (opt,)))
    opt.zero_grad()
    scaler.scale(mlp_loss(model, regression_data())).backward()
    scaler.step(opt)
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        scaler.unscale_(opt)  # it would divide the gradients a second time
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    scaler.update()
    with pytest.raises(AssertionError, match="No inf checks were recorded prior to update"):
        scaler.update()  # neither step() nor unscale_() since the last one


def test_loss_scaler_has_gradscalers_accessors_and_scales_iterables():
    s = LossScaler("cpu", init_scale=4.0)
    for name, value in (("growth_factor", 3.0), ("backoff_factor", 0.25), ("growth_interval", 7)):
        getattr(s, f"set_{name}")(value)
        assert getattr(s, f"get_{name}")() == value
    assert s._get_growth_tracker() == 0
    scaled = s.scale(t for t in (torch.ones(2), torch.full((1,), 2.0)))
    assert [t.tolist() for t in scaled] == [[4.0, 4.0], [8.0]]
    with pytest.raises(ValueError, match="iterable of Tensors"):
        s.scale(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_loss_scaler_for_cuda_disables_itself_without_cuda_like_gradscaler():
    with pytest.warns(UserWarning, match="CUDA is not available.  Disabling"):
        s = LossScaler()
    assert not s.is_enabled()
    loss = torch.ones(())
    assert s.scale(loss) is loss


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
@pytest.mark.parametrize("make", ["fastdyn", "torch fused", "torch plain"])
@pytest.mark.parametrize("unscale", [False, True], ids=["step", "unscale_+step"])
def test_a_step_without_gradients_is_no_inf_check(kind, make, unscale):
    """An iteration with no gradient at all (a forgotten backward) checked nothing: GradScaler
    says so, at the step of an optimizer it unscales itself, else at update(); LossScaler
    did at update() only for a fastdyn step it had not unscaled, and otherwise counted a
    clean step towards growth."""
    model = mlp()
    opt = {"fastdyn": lambda ps: fastdyn.optim.AdamW(ps, lr=1e-2),
           "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
           "torch plain": lambda ps: torch.optim.SGD(ps, lr=1e-2)}[make](model.parameters())
    scaler = scaler_for(kind, "cpu", growth_interval=1)
    scaler.scale(mlp_loss(model, regression_data()))  # no backward
    with pytest.raises(AssertionError, match="No inf checks were recorded"):
        if unscale:
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 2.0 ** 10


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
@pytest.mark.parametrize("make", ["fastdyn", "torch fused", "torch plain"])
def test_unscale_takes_gradients_with_gaps_and_writes_them(kind, make):
    """A hand-assigned gradient that is a view with gaps (big[:, ::2]) is unscaled in place,
    as GradScaler does: LossScaler.unscale_ had refused it ("tensors[1] is not dense")."""
    def run(kind):
        torch.manual_seed(0)
        w, p = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4, 6))
        opt = {"fastdyn": lambda ps: fastdyn.optim.AdamW(ps, lr=1e-2),
               "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
               "torch plain": lambda ps: torch.optim.SGD(ps, lr=1e-2)}[make]([w, p])
        scaler = scaler_for(kind, "cpu", init_scale=8.0)
        scaler.scale((w * w).sum()).backward()
        big = torch.randn(4, 12) * 8.0
        p.grad = big[:, ::2]
        scaler.unscale_(opt)
        assert p.grad.data_ptr() == big.data_ptr()  # still the caller's view, written
        unscaled = big.clone()
        fastdyn.clip_grad_norm_([w, p], 1.0)
        scaler.step(opt)
        scaler.update()
        return unscaled, [w.detach(), p.detach()]

    (theirs, their_params), (ours, our_params) = run("GradScaler"), run(kind)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for a, b in zip(our_params, their_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unscale_names_a_gradient_shared_by_two_params():
    """One gradient tensor for two params would be divided twice (GradScaler does so
    silently): refused, naming the params (the message had named the op's internal list,
    "tensors[0] and tensors[1]"), and nothing written."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = fastdyn.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    scaler = LossScaler("cpu", init_scale=4.0)
    scaler.scale((a + b).sum()).backward()
    b.grad = a.grad
    with pytest.raises(ValueError, match=r"params\[0\]\.grad of param group 0 and params\[0\]\.grad "
                                         r"of param group 1 share memory"):
        scaler.unscale_(opt)
    assert torch.equal(a.grad, torch.full((3,), 4.0))


@pytest.mark.parametrize("name", ["AdamW", "SGD", "LARS", "LAMB-noclip", "LAMB"])
def test_loss_scaler_reports_the_unscaled_grad_norm(name):
    """The norm the step's inf check computes is the unscaled one, as LAMB's clipping norm
    and the per-tensor stats are (it used to come out times the loss scale; the ||g|| column
    was unchecked: scripts/mutants.py M10); a later step
    that computes none reports none, not the stale one."""
    model = mlp()
    opt = make(name, model, track_stats=True)
    scaler = LossScaler("cpu", init_scale=1024.0)
    scaler.scale(mlp_loss(model, regression_data())).backward()
    per_tensor = torch.stack([p.grad.double().norm() for p in model.parameters()]) / 1024
    true = torch.linalg.vector_norm(per_tensor)
    scaler.step(opt)
    scaler.update()
    for reported in (scaler.last_grad_norm, opt.last_stats().grad_norm):
        torch.testing.assert_close(reported.double(), true, rtol=1e-5, atol=0)
    # the ||g|| column too (LAMB's clipping pass gives it there: its per-tensor norms, which
    # saw the scaled gradients)
    torch.testing.assert_close(opt.last_stats().values[:, 0].double(), per_tensor, rtol=1e-5, atol=0)
    opt.zero_grad()
    mlp_loss(model, regression_data()).backward()
    opt.step()  # no scaler: nothing computes a global norm (LAMB's clipping does)
    assert (opt.last_stats().grad_norm is None) == (name != "LAMB")


@pytest.mark.parametrize("kind", ["GradScaler", "LossScaler"])
def test_unscale_refuses_an_expanded_gradient_before_writing_any(kind):
    """An expanded gradient (elements sharing memory) cannot be written in place: refused
    with torch's words before any other gradient is unscaled."""
    w, p = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4, 6))
    opt = fastdyn.optim.AdamW([w, p], lr=1e-2)
    scaler = scaler_for(kind, "cpu", init_scale=8.0)
    scaler.scale((w * w).sum()).backward()
    p.grad = torch.randn(6).expand(4, 6)
    w_grad = w.grad.clone()
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        scaler.unscale_(opt)
    if kind == "LossScaler":  # (GradScaler's foreach op writes the others first)
        assert torch.equal(w.grad, w_grad)
