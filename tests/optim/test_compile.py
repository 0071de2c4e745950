"""torch.compile of a whole optimizer step: fullgraph (no graph break) on the native and
Triton backends, and no recompile when a tensor lr changes."""

import math
from functools import partial

import pytest
import torch
import torch._dynamo

import fastdyn
from fastdyn.ops import use_backend
from fastdyn.ops.backend import triton_available
from helpers import INTERPRETED, cuda_only, fullgraph_step
from optim.models import mlp, mlp_loss, regression_data

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda_only])]

CASES = {
    "AdamW": dict(weight_decay=0.01),
    "SGD": dict(momentum=0.9),
    "LAMB": dict(max_grad_norm=1.0),
    "LARS": dict(weight_decay=1e-3),
    # dampening: the first step's buffer is g itself, so step 1 runs another bucket
    "SGD-dampening": dict(momentum=0.9, dampening=0.1),
    "LARS-dampening": dict(weight_decay=1e-3, dampening=0.1),
}


@pytest.mark.parametrize("backend", ["native", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_fullgraph_no_recompile(name, device, backend):
    if backend == "triton" and not (triton_available() and (device == "cuda" or INTERPRETED)):
        pytest.skip("Triton runs on a GPU, or on the CPU under TRITON_INTERPRET=1")
    torch._dynamo.reset()
    model, twin = mlp().to(device), mlp().to(device)
    lr = torch.tensor(1e-2, device=device)
    cls = getattr(fastdyn.optim, name.split("-")[0])
    opt = cls(model.parameters(), lr=lr, **CASES[name])
    eager = cls(twin.parameters(), lr=lr.clone(), **CASES[name])
    data = tuple(t.to(device) for t in regression_data())

    step, frames = fullgraph_step(opt)
    with use_backend(backend):
        for i in range(4):
            for m, o in ((model, opt), (twin, eager)):
                o.zero_grad()
                mlp_loss(m, data).backward()
            # the first step creates the state; steps after it must reuse one graph
            step()
            eager.step()
            new_lr = 1e-2 / (i + 2)
            opt.param_groups[0]["lr"].fill_(new_lr)
            eager.param_groups[0]["lr"].fill_(new_lr)
    assert len(frames) <= 2, f"{len(frames)} graphs for 4 steps: lr changes recompiled"
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_with_inductor(device):
    torch._dynamo.reset()
    model = mlp().to(device)
    opt = fastdyn.optim.AdamW(model.parameters(), lr=torch.tensor(1e-2, device=device))
    data = tuple(t.to(device) for t in regression_data())
    step = torch.compile(opt.step, fullgraph=True)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = mlp_loss(model, data)
        loss.backward()
        step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_scheduler_changes_tensor_lr_without_recompiling():
    torch._dynamo.reset()
    model = mlp()
    opt = fastdyn.optim.LAMB(model.parameters(), lr=torch.tensor(1e-2))
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
    frames = []

    # A scheduler wraps opt.step in a counter that dynamo does not trace (the same for
    # torch's optimizers), so the step compiles as its own frame: fullgraph=False here.
    @torch.compile(backend=lambda gm, _: frames.append(gm) or gm.forward)
    def step():
        opt.step()

    data = regression_data()
    lrs = []
    for _ in range(5):
        opt.zero_grad()
        mlp_loss(model, data).backward()
        step()
        sched.step()
        lrs.append(float(opt.param_groups[0]["lr"]))
    assert len(set(lrs)) > 1
    n_graphs = len(frames)
    for _ in range(3):
        opt.zero_grad()
        mlp_loss(model, data).backward()
        step()
        sched.step()
    assert len(frames) == n_graphs, "a changed lr recompiled the step"


SCHEDULES = {
    # a float lr each step
    "cosine-lr": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 12),
    # and a new beta1 (Adam, LAMB) or momentum (SGD, LARS), cycle_momentum being its default
    "one-cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12),
}


def _graphs_of_a_compiled_step_matching_eager(make_opt, before_step=None, after_step=None):
    """Trains mlp() 12 steps with the eager step and with the class's step compiled by
    aot_eager under fullgraph=True (the scheduler's wrapper of opt.step is not traceable),
    from the same start, before_step/after_step(opt, i) editing the groups around each
    step; checks that both end at the same params and returns the compiled run's graphs."""
    from torch._dynamo.utils import counters

    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = mlp()
        opt = make_opt(model.parameters())
        step = (partial(torch.compile(type(opt).step, backend="aot_eager", fullgraph=True), opt)
                if compiled else opt.step)
        data = regression_data()
        for i in range(12):
            opt.zero_grad()
            mlp_loss(model, data).backward()
            if before_step is not None:
                before_step(opt, i)
            step()
            if after_step is not None:
                after_step(opt, i)
        results.append([p.detach().clone() for p in model.parameters()])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    return counters["stats"]["unique_graphs"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", ["AdamW", "SGD", "LAMB", "LARS", "SGD-dampening"])
def test_a_scheduler_does_not_recompile_the_step(name, schedule):
    """What a scheduler writes into the groups each step is a graph input, as in torch's
    compiled optimizers (2 graphs): a float lr had been filled into the cached lr tensor
    from a float dynamo guarded on, and beta1/momentum were float arguments of the ops,
    each value a new graph until the recompile limit (8: the step then ran eagerly, or
    raised FailOnRecompileLimitHit under fullgraph=True). The eager step's values (torch
    2.11's AOT autograd had lost the lr fill after such a recompile: a stale lr)."""
    schedulers, seen = [], set()

    def make_opt(params):
        opt = getattr(fastdyn.optim, name.split("-")[0])(params, lr=0.05, **CASES[name])
        schedulers.append(SCHEDULES[schedule](opt))
        return opt

    def after_step(opt, i):
        group = opt.param_groups[0]
        seen.add((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        schedulers[-1].step()

    graphs = _graphs_of_a_compiled_step_matching_eager(make_opt, after_step=after_step)
    assert len(seen) >= 10  # (the scheduler did change them)
    assert graphs <= 3


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "LAMB", "LARS"])
def test_a_weight_decay_schedule_does_not_recompile_the_step(name):
    """A cosine weight-decay schedule written into the groups each step (DINO's, with a
    cosine lr beside it), from 0 (no decay: the kernels leave the p term out; LAMB and LARS
    do not adapt, LARS runs as SGD) up: weight_decay was a float argument of the ops, a graph
    per value until the recompile limit (as torch's foreach AdamW with a float lr, on torch
    2.14; with a tensor lr it makes 2)."""
    def before_step(opt, i):
        for group in opt.param_groups:
            group["weight_decay"] = 0.2 * (1 - math.cos(math.pi * i / 11)) / 2
            group["lr"] = 0.05 * (1 + math.cos(math.pi * i / 11)) / 2

    graphs = _graphs_of_a_compiled_step_matching_eager(
        lambda params: getattr(fastdyn.optim, name)(
            params, lr=0.05, **({"momentum": 0.9} if name == "SGD" else {})),
        before_step=before_step)
    # the first step creating the state, the later ones; one more where weight_decay 0 picks
    # other kernels (LARS: sgd_, a guard on weight_decay == 0)
    assert graphs <= 3


@pytest.mark.parametrize("name", ["SGD-dampening", "LARS-dampening"])
def test_compiled_step_with_a_skipped_first_step(name):
    """found_inf as GradScaler hands it over: the step that decides on the device whether the
    buffers' first step is still ahead compiles (one graph creates the state, one runs every
    later step) and matches the eager step."""
    torch._dynamo.reset()
    model, twin = mlp(), mlp()
    cls = getattr(fastdyn.optim, name.split("-")[0])
    opt = cls(model.parameters(), lr=torch.tensor(1e-2), **CASES[name])
    eager = cls(twin.parameters(), lr=torch.tensor(1e-2), **CASES[name])
    data = regression_data()
    step, frames = fullgraph_step(opt)
    for i in range(4):
        for m, o in ((model, opt), (twin, eager)):
            o.zero_grad()
            mlp_loss(m, data).backward()
            o.grad_scale, o.found_inf = None, torch.tensor(float(i == 0))
        step()
        eager.step()
    assert len(frames) <= 2, f"{len(frames)} graphs for 4 steps"
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], eager.state[q]["momentum_buffer"])


# (torch 2.6's dynamo cannot trace `is` of dicts; 2.11's traces it but does not retrace a
# step for a replaced params list, found by scripts/test_other_torch.sh 2.11.0)
@pytest.mark.skipif(torch.__version__ < "2.14", reason="older dynamo misses a replaced params list")
@pytest.mark.parametrize("change", ["params swapped", "state cleared"])
def test_compiled_step_sees_replaced_params_and_cleared_state(change):
    torch._dynamo.reset()
    ps = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    fresh = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    opt = fastdyn.optim.SGD(ps, lr=0.1, momentum=0.9)
    step, _ = fullgraph_step(opt)
    for k in range(4):
        if k == 2:
            if change == "params swapped":
                opt.param_groups[0]["params"] = fresh
            else:
                opt.state.clear()
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones(4)
        step()
    # two steps since the change: buf = 1, then 0.9 * 1 + 1
    for p in opt.param_groups[0]["params"]:
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.full((4,), 1.9))


def _swap(opt, change: str, fresh: torch.nn.Parameter) -> None:
    group, params = opt.param_groups[0], opt.param_groups[0]["params"]
    if change == "param swapped in the list":
        params[0] = fresh
    elif change == "group dict replaced":
        opt.param_groups[0] = {**group, "lr": 0.5}
    elif change == "state tensor swapped":
        key = "momentum_buffer" if "momentum_buffer" in opt.state[params[0]] else "exp_avg"
        opt.state[params[0]][key] = torch.full((4,), 3.0)
    elif change == "step counter reset":
        opt.state[params[0]]["step"] = torch.tensor(0.0)
    elif change == "one param's state cleared":
        opt.state[params[1]].clear()
    else:  # one param's state deleted
        del opt.state[params[1]]


@pytest.mark.skipif(torch.__version__ < "2.14", reason="older dynamo misses a replaced params list")
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
@pytest.mark.parametrize("change", ["param swapped in the list", "group dict replaced",
                                    "state tensor swapped", "step counter reset",
                                    "one param's state cleared", "one param's state deleted"])
def test_compiled_step_sees_objects_swapped_between_steps(name, change):
    """The compiled graph reads its tensors through the cached plan, and dynamo's guards on
    tensors check metadata, not identity: a param swapped into the params list kept the old
    one stepping with the new one's grad, a replaced group dict's lr was ignored, a swapped
    state tensor or a cleared state was never used (eager fastdyn and torch, eager or
    compiled, use them). Compiled steps match eager ones. (A param's whole state dict
    replaced, `opt.state[p] = {}`, is not seen: README.)"""
    if change == "step counter reset" and name == "SGD":
        pytest.skip("SGD has no step counter")
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        ps = [torch.nn.Parameter(torch.linspace(-1, 1, 4) * (i + 1)) for i in range(2)]
        fresh = torch.nn.Parameter(torch.full((4,), 2.0))
        opt = getattr(fastdyn.optim, name)(ps, lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
        step = fullgraph_step(opt)[0] if compiled else opt.step
        for k in range(4):
            if k == 2:
                _swap(opt, change, fresh)
            for i, p in enumerate(opt.param_groups[0]["params"]):
                p.grad = torch.full((4,), float(i + 1))
            step()
        results.append([t.detach().clone() for t in (*ps, fresh)])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0][2], torch.full((4,), 2.0)) or change != "param swapped in the list"


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_eager_steps_after_a_compiled_one_step_the_state_they_see(name):
    """One optimizer stepped eagerly, compiled, then eagerly: a compiled step that built a
    new plan (around a state tensor swapped in) left the previous eager plan's record of the
    objects in place, so the next eager step, the original tensor swapped back, found that
    record matching and reused the compiled step's plan: it stepped the tensor no longer in
    the state, and the state's did not move."""
    torch._dynamo.reset()
    key = "momentum_buffer" if name == "SGD" else "exp_avg"
    p = torch.nn.Parameter(torch.ones(4))
    opt = getattr(fastdyn.optim, name)([p], lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
    compiled_step = fullgraph_step(opt)[0]
    p.grad = torch.ones(4)
    opt.step()
    opt.step()
    held = opt.state[p][key]
    opt.state[p][key] = held.clone()
    compiled_step()
    opt.state[p][key] = held
    before = held.clone()
    opt.step()
    assert not torch.equal(held, before)


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_compiled_step_lets_loaded_masters_give_way_to_new_weights(name):
    """Weights loaded into a bf16 model after its optimizer's master checkpoint: the eager
    step keeps them (the masters give way where their rounding is not the param), the
    compiled step had skipped that check and stepped from the stale masters."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(16, 8, dtype=torch.bfloat16)

    def backward():
        model.zero_grad()
        model(x).float().pow(2).mean().backward()

    opt = getattr(fastdyn.optim, name)(model.parameters(), lr=1e-3, master_weights=True)
    for _ in range(2):
        backward()
        opt.step()
    resumed = getattr(fastdyn.optim, name)(model.parameters(), lr=1e-3, master_weights=True)
    resumed.load_state_dict(opt.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    step, _ = fullgraph_step(resumed)
    backward()
    step()
    for p in model.parameters():  # a step of ~lr from 0.5, not the stale masters' values
        assert (p.float() - 0.5).abs().max() < 0.01, p


@pytest.mark.skipif(torch.__version__ < "2.11", reason="torch 2.6's dynamo (2.11 checked to work) keeps the old plan when a param changes dtype or layout between compiled steps")
@pytest.mark.parametrize("name,change", [("AdamW", "channels_last"), ("SGD", "double"),
                                         ("LAMB", "double")])
def test_compiled_step_follows_a_param_given_new_storage(name, change):
    """`model.double()` or `model.to(memory_format=torch.channels_last)` between compiled
    steps: the retrace used to keep the plan of the old dtype or layout, and the step
    raised. The compiled steps now match eager steps of the same optimizer bit for bit."""
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    results, graphs = [], []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 4 * 4, 2))
        opt = getattr(fastdyn.optim, name)(model.parameters(), **kw)
        step, graphs = fullgraph_step(opt) if compiled else (opt.step, graphs)
        x = torch.randn(2, 3, 5, 5)
        for k in range(4):
            if k == 2:
                if change == "channels_last":
                    model.to(memory_format=torch.channels_last)
                    x = x.to(memory_format=torch.channels_last)
                else:
                    model.double()
                    x = x.double()
            opt.zero_grad()
            model(x).square().sum().backward()
            step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert len(graphs) <= 4, f"{len(graphs)} graphs for 4 steps and one change"
    for p, q in zip(*results):
        assert p.dtype == q.dtype and p.stride() == q.stride()
        assert torch.equal(p, q)


@pytest.mark.skipif(torch.__version__ < "2.11", reason="torch 2.6's dynamo (2.11 checked to work) keeps the old plan when a param changes dtype or layout between compiled steps")
def test_compiled_step_makes_master_weights_when_the_model_goes_to_float16():
    torch._dynamo.reset()
    p = torch.nn.Parameter(torch.ones(4))
    opt = fastdyn.optim.SGD([p], lr=1e-4, master_weights=True)
    step, _ = fullgraph_step(opt)
    p.grad = torch.ones(4)
    step()
    p.data = p.data.half()
    for _ in range(20):
        p.grad = torch.ones(4, dtype=torch.float16)
        step()
    assert opt.state[p]["master_param"].dtype == torch.float32
    assert p[0].item() < 0.9985  # 1 - 21e-4 = 0.9979; without a master copy it stays 1.0


@pytest.mark.parametrize("name", ["AdamW", "LAMB", "LAMB-clipping"])
def test_compiled_step_takes_grads_laid_out_unlike_their_params(name):
    """A hand-assigned transposed grad: the eager step copies it into the param's layout
    (as torch takes it); the compiled step raised the op's layout error instead. It now
    checks the layout at trace time, before LAMB's global norm too, and matches the eager
    step bit for bit."""
    results = []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(5))]
        kw = dict(max_grad_norm=1.0) if name.endswith("clipping") else {}
        opt = getattr(fastdyn.optim, name.split("-")[0])(params, lr=0.05, **kw)
        step = fullgraph_step(opt)[0] if compiled else opt.step
        for _ in range(3):
            params[0].grad = torch.randn(6, 4).t()
            params[1].grad = torch.randn(5)
            step()
        assert not params[0].grad.is_contiguous()  # the caller's grad is left as it was
        results.append([p.detach().clone() for p in params])
    for p, q in zip(*results):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_takes_grads_viewing_one_flat_buffer(name):
    """Gradients that are views into one flat buffer (DDP's gradient_as_bucket_view,
    Megatron's and DeepSpeed's contiguous gradient buffers), a channels_last conv weight's
    among them: dynamo failed every compiled step with "Cannot construct ConstantVariable
    for value of type SymInt", reading such a view's stride to compare layouts. The eager
    step's bits."""
    shapes = [(8, 3, 3, 3), (8,), (5, 7)]
    results = []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        params[0].data = params[0].data.to(memory_format=torch.channels_last)
        opt = getattr(fastdyn.optim, name.split("-")[0])(params, lr=0.05, **CASES[name])
        step = fullgraph_step(opt)[0] if compiled else opt.step
        for _ in range(3):
            flat = torch.randn(sum(p.numel() for p in params))
            offset = 0
            for p in params:
                view = flat[offset:offset + p.numel()]
                offset += p.numel()
                p.grad = view.as_strided(p.shape, p.stride())  # (DDP's layout: the param's)
            step()
        assert params[0].grad.data_ptr() == flat.data_ptr()  # (the grads were views)
        results.append([p.detach().clone() for p in params])
    for p, q in zip(*results):
        assert torch.equal(p, q)
