"""Bad hyperparameters and bad params fail at construction with a message naming them; a
failed step leaves everything untouched."""

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES
from optim.models import mlp, mlp_loss, regression_data

P = lambda: [torch.nn.Parameter(torch.randn(3))]  # noqa: E731

# (optimizer, bad hyperparameter, torch's words for it, the argument as the contract names it)
BAD = [
    ("Adam", dict(lr=-1.0), "learning rate", "lr"),
    ("Adam", dict(betas=(1.0, 0.9)), "beta parameter at index 0", "betas[0]"),
    ("Adam", dict(betas=(0.9, -0.1)), "beta parameter at index 1", "betas[1]"),
    ("Adam", dict(eps=-1e-8), "epsilon", "eps"),
    ("AdamW", dict(eps=0.0), "epsilon", "eps"),  # the contract: eps <= 0 (torch takes 0: 0/0 = NaN)
    ("Adam", dict(weight_decay=-1.0), "weight_decay", "weight_decay"),
    ("AdamW", dict(lr=float("nan")), "learning rate", "lr"),
    ("SGD", dict(lr=-0.1), "learning rate", "lr"),
    ("SGD", dict(momentum=-0.5), "momentum", "momentum"),
    ("SGD", dict(dampening=1.5), "dampening", "dampening"),
    ("SGD", dict(nesterov=True), "Nesterov", None),  # torch's message, of two arguments
    ("LAMB", dict(lr=-1e-3), "learning rate", "lr"),
    ("LAMB", dict(betas=(0.9, 1.0)), "beta parameter at index 1", "betas[1]"),
    ("LAMB", dict(eps=0.0), "epsilon", "eps"),
    ("LAMB", dict(max_grad_norm=0.0), "max_grad_norm", "max_grad_norm"),
    ("LAMB", dict(weight_decay=-0.1), "weight_decay", "weight_decay"),
    ("LARS", dict(lr=-1.0), "learning rate", "lr"),
    ("LARS", dict(trust_coeff=0.0), "trust_coeff", "trust_coeff"),
    ("LARS", dict(momentum=-0.9), "momentum", "momentum"),
    ("LARS", dict(dampening=2.0), "dampening", "dampening"),
    ("LARS", dict(eps=0.0), "epsilon", "eps"),
]


@pytest.mark.parametrize("name,kw,torch_words,arg", BAD,
                         ids=[f"{n}-{list(k)[0]}" for n, k, _, _ in BAD])
def test_bad_hyperparameters(name, kw, torch_words, arg):
    """The message opens with torch's words (code matching torch's messages keeps working)
    and names the argument and the value, as the contract asks."""
    with pytest.raises(ValueError) as raised:
        getattr(fastdyn.optim, name)(P(), **kw)
    message = str(raised.value)
    assert torch_words in message
    if arg is not None:
        (key, value), = kw.items()
        value = value[int(arg[-2])] if key == "betas" else value
        assert f"{arg} must be in" in message and f": {value} (" in message, message


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "LAMB", "LARS"])
def test_bad_params(name):
    cls = getattr(fastdyn.optim, name)
    with pytest.raises(TypeError, match=r"params\[1\] is complex"):
        cls([torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2, dtype=torch.complex64))])
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.int64"):
        cls([torch.zeros(2, dtype=torch.int64)])
    p = torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match=r"params\[1\] of the new param group is already in "
                                         "param group 0: .*more than one parameter group"):
        cls([{"params": [p]}, {"params": [torch.nn.Parameter(torch.randn(2)), p]}])
    with pytest.raises(ValueError, match="not dense"):
        cls([torch.randn(4, 4)[:, :2]])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        cls([{"params": P()}, {"params": P(), "lr": -1.0}])


@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB", "LARS"])
def test_sparse_grad_fails_before_anything_moves(name):
    cls = getattr(fastdyn.optim, name)
    ps = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))]
    opt = cls(ps, lr=0.1)
    ps[0].grad = torch.randn(4)
    ps[1].grad = torch.randn(4).to_sparse()
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=r"sparse gradients \(params\[1\] of param group 0"):
        opt.step()
    for p, b in zip(ps, before):
        assert torch.equal(p, b)
    assert not opt.state  # no state created by the refused step


@pytest.mark.parametrize("name", ["SGD", "LARS"])
def test_a_refused_step_leaves_the_first_momentum_step_ahead(name):
    """A step refused for a later param's sparse grad used to create the earlier params'
    momentum buffers first: the next step took them for started ones and set buf =
    (1 - dampening) * d where torch sets buf = d."""
    ps = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))]
    opt = getattr(fastdyn.optim, name)(ps, lr=0.1, momentum=0.9, dampening=0.5)
    ps[0].grad, ps[1].grad = torch.ones(3), torch.ones(4).to_sparse()
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.step()
    ps[1].grad = torch.ones(4)
    opt.step()
    for p in ps:
        assert torch.equal(opt.state[p]["momentum_buffer"], torch.ones_like(p))


@pytest.mark.parametrize("name,key", [("AdamW", "exp_avg"), ("LAMB", "exp_avg_sq"),
                                      ("SGD", "momentum_buffer"), ("LARS", "momentum_buffer")])
def test_state_of_the_wrong_shape_is_refused_before_any_group_steps(name, key):
    """State of another model's shape in the second group (a state dict of another model):
    its op refused it after the first group had stepped, a half-updated parameter set."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    kw = dict(momentum=0.9) if name == "SGD" else {}
    opt = getattr(fastdyn.optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1, **kw)
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    opt.step()
    opt.state[b][key] = torch.zeros(5)
    before = [t.clone() for t in (a, b, *opt.state[a].values())]
    with pytest.raises(ValueError, match=rf"state\['{key}'\] of params\[0\] of param group 1 "
                                         r"has shape \[5\], but the param has shape \[4\]"):
        opt.step()
    for t, u in zip(before, (a, b, *opt.state[a].values())):
        assert torch.equal(t, u)


@pytest.mark.parametrize("name,keys", [("AdamW", ("exp_avg", "exp_avg_sq")),
                                       ("LAMB", ("exp_avg", "exp_avg_sq")),
                                       ("SGD", ("momentum_buffer", None)),
                                       ("LARS", ("momentum_buffer", None))])
def test_state_sharing_memory_is_refused_before_any_group_steps(name, keys):
    """A loaded state dict whose second group holds one tensor twice (exp_avg is exp_avg_sq;
    torch.save keeps such sharing) or its param's memory: the op of that group refused it
    after the first group had stepped."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    kw = dict(momentum=0.9) if name == "SGD" else {}
    opt = getattr(fastdyn.optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1, **kw)
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    opt.step()
    first, second = keys
    opt.state[b][first] = opt.state[b][second] if second else b.detach()
    before = [t.clone() for t in (a, *opt.state[a].values())]
    with pytest.raises(ValueError, match=rf"state\['{first}'\] of params\[0\] of param group 1 "
                                         r"(and .* )?share memory"):
        opt.step()
    for t, u in zip(before, (a, *opt.state[a].values())):
        assert torch.equal(t, u)


@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB", "LARS"])
@pytest.mark.parametrize("lr_dtype", [torch.float16, torch.bfloat16])
def test_a_16_bit_tensor_lr_steps_like_torch(name, lr_dtype):
    """torch's optimizers step with a float16 tensor lr; fastdyn's op refused it in the
    second group after the first had stepped."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    kw = dict(momentum=0.9) if name == "SGD" else {}
    opt = getattr(fastdyn.optim, name)(
        [{"params": [a]}, {"params": [b], "lr": torch.tensor(0.5, dtype=lr_dtype)}], lr=0.5, **kw)
    twin = torch.nn.Parameter(torch.ones(4))
    ref = getattr(fastdyn.optim, name)([twin], lr=torch.tensor(0.5), **kw)
    for p in (a, b, twin):
        p.grad = torch.full_like(p, 0.25)
    opt.step()
    ref.step()
    assert torch.equal(b.detach(), twin.detach())


@pytest.mark.parametrize("name", ["AdamW", "LAMB", "SGD", "LARS"])
@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_a_param_replaced_after_backward_is_refused_before_any_group_steps(name, change):
    """A param's data replaced (another shape or dtype) between backward and step: its
    gradient no longer fits it. The update op of its bucket had refused it after the other
    buckets had stepped, naming its index inside the bucket."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    kw = dict(momentum=0.9) if name == "SGD" else {}
    opt = getattr(fastdyn.optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1, **kw)
    a.grad, b.grad = torch.ones(3), torch.ones(4)
    opt.step()
    before = [t.clone() for t in (a, *opt.state[a].values())]
    b.data = torch.ones(5) if change == "shape" else torch.ones(4, dtype=torch.bfloat16)
    error, words = ((ValueError, r"shape \[4\], but the param has shape \[5\]") if change == "shape"
                    else (TypeError, "dtype torch.float32, but the param has torch.bfloat16"))
    with pytest.raises(error, match=r"the gradient of params\[0\] of param group 1 has " + words):
        opt.step()
    for t, u in zip(before, (a, *opt.state[a].values())):
        assert torch.equal(t, u)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_grads_laid_out_unlike_their_params_step_like_torch(backend, device):
    """A hand-assigned grad with the param's shape but not its strides: the op refuses it
    before writing, and the step copies it into the param's layout, as torch takes it (it
    used to raise, after the buckets before it had stepped: here the float64 one)."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64, device=device)),
            torch.nn.Parameter(torch.randn(4, 4, device=device)),
            torch.nn.Parameter(torch.randn(3, device=device))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    grads = [torch.randn(4, 4, dtype=torch.float64, device=device),
             torch.randn(4, 4, device=device).t(), torch.randn(3, device=device)]
    o1 = fastdyn.optim.AdamW(ours, lr=0.1)
    o2 = torch.optim.AdamW(theirs, lr=0.1)
    for _ in range(3):
        for ps, o in ((ours, o1), (theirs, o2)):
            for p, g in zip(ps, grads):
                p.grad = g.clone() if g.is_contiguous() else g.clone().t().contiguous().t()
            with use_backend(backend):
                o.step()
    assert not ours[1].grad.is_contiguous()  # the caller's grad is left as it was
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_size_one_dims_take_any_stride_like_torch(backend, device, name):
    """A size-1 dim's stride is arbitrary: a (1, 40) gradient with strides (1, 1) walks
    memory as the (40, 1)-strided param does. torch takes it; so must the layout check."""
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    ours = torch.nn.Parameter(torch.randn(1, 40, device=device))
    theirs = torch.nn.Parameter(ours.detach().clone())
    grad = torch.randn(40, 1, device=device).t()
    assert grad.shape == ours.shape and grad.stride() != ours.stride()
    ours.grad, theirs.grad = grad, grad.clone()
    with use_backend(backend):
        getattr(fastdyn.optim, name)([ours], **kw).step()
    getattr(torch.optim, name)([theirs], **kw).step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


class UserParameter(torch.nn.Parameter):
    """A Parameter subclass (FSDP1's FlatParameter is one): memory of its own, which the
    checks once skipped (an exact type test)."""


@pytest.mark.parametrize("param_class", [torch.nn.Parameter, UserParameter])
def test_the_same_param_twice_is_refused(param_class):
    """The fused step writes all params at once: one listed twice would lose an update
    (torch only warns, and applies it twice)."""
    p = param_class(torch.randn(3))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
            fastdyn.optim.SGD([p, p], lr=0.1)


@pytest.mark.parametrize("param_class", [torch.nn.Parameter, UserParameter])
def test_params_of_two_groups_sharing_memory_are_refused_before_any_step(param_class):
    """A param of one group viewing another group's memory: refused before anything is
    written (a Parameter subclass was left out of the check, and both groups stepped the
    shared elements)."""
    flat = torch.zeros(6)
    a, b = torch.nn.Parameter(flat[:4]), param_class(flat[2:])
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    with pytest.raises(ValueError, match=r"params\[0\] of param group 0 and params\[0\] of param group 1 share memory"):
        fastdyn.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).step()
    assert not flat.any()


def test_differentiable_rejected():
    with pytest.raises(ValueError, match="differentiable"):
        fastdyn.optim.Adam(P(), differentiable=True)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("case", ["LAMB-clipping", "AdamW-LossScaler", "LAMB-LossScaler"])
def test_grads_with_gaps_step_like_contiguous_ones_through_the_read_pass(backend, device, case):
    """A hand-assigned grad with gaps (a slice) reaches the read pass before any update
    (LAMB's global norm, LossScaler's inf check), whose norm op refused it naming an
    internal list ("tensors[1] is not dense"). It is now copied into its param's layout
    there too, and the step equals one given contiguous grads, bit for bit."""
    name, how = case.split("-")
    kw = dict(max_grad_norm=1.0) if how == "clipping" else {}
    results = []
    for gapped in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3, device=device)) for _ in range(2)]
        opt = getattr(fastdyn.optim, name)([{"params": [params[0]]}, {"params": [params[1]]}],
                                           lr=0.1, **kw)
        scaler = fastdyn.amp.LossScaler(device, init_scale=4.0) if how == "LossScaler" else None
        for _ in range(3):
            wide = torch.randn(4, 6, device=device)
            params[0].grad = torch.randn(4, 3, device=device)
            params[1].grad = wide[:, :3] if gapped else wide[:, :3].contiguous()
            with use_backend(backend):
                if scaler is None:
                    opt.step()
                else:
                    scaler.scale(torch.ones((), device=device))
                    scaler.step(opt)
                    scaler.update()
        results.append([p.detach().clone() for p in params])
    for p, q in zip(*results):
        assert torch.equal(p, q)


BAD_HYPERS = {
    "two values": (torch.tensor([0.9, 0.8]), ValueError, "must hold one value, got shape \\[2\\]"),
    "meta": (torch.tensor(0.9, device="meta"), ValueError, "is on the meta device"),
    "integer": (torch.tensor(1), TypeError, "must be floating point, got torch.int64"),
    "None": (None, TypeError, "must be a number or a tensor, got NoneType"),
}


@pytest.mark.parametrize("bad", list(BAD_HYPERS))
@pytest.mark.parametrize("name,key", [("AdamW", "betas"), ("LAMB", "betas"), ("SGD", "momentum"),
                                      ("LARS", "momentum"), ("SGD", "lr"),
                                      ("Adam", "weight_decay"), ("SGD", "weight_decay"),
                                      ("LAMB", "weight_decay"), ("LARS", "weight_decay")])
def test_a_bad_hyperparameter_of_a_later_group_is_refused_before_any_group_steps(name, key, bad):
    """lr, beta1, momentum and weight_decay edited into a group (a tensor the kernels read): a bad one of
    group 1 was refused by its op after group 0 had stepped, or with messages naming no
    argument ("Boolean value of Tensor with more than one value is ambiguous")."""
    value, error, message = BAD_HYPERS[bad]
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    kw = dict(momentum=0.9) if name == "SGD" else {}
    opt = getattr(fastdyn.optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1, **kw)
    a.grad, b.grad = torch.ones(4), torch.ones(4, dtype=torch.float64)
    opt.step()
    group = opt.param_groups[1]
    group[key] = (value, group["betas"][1]) if key == "betas" else value
    before = [t.clone() for t in (a.detach(), b.detach(), *opt.state[a].values())]
    label = {"betas": "betas\\[0\\]"}.get(key, key)
    with pytest.raises(error, match=f"{label} of param group 1 {message}"):
        opt.step()
    after = (a.detach(), b.detach(), *opt.state[a].values())
    assert all(torch.equal(x, y) for x, y in zip(before, after))
