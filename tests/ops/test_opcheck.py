"""torch.library.opcheck of every op on every backend with kernels here: schema (declared
mutations are the real ones), fake kernels, autograd registration, AOT dispatch."""

import math

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES


def _namespace(backend):
    if backend == "triton":
        import fastdyn.ops.triton  # noqa: F401
        return torch.ops.fastdyn_triton
    return torch.ops.fastdyn


def _lists(device, n=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(dtype).to(device) for s in (5, 70, 1)[:n]]


def samples(device):
    d = device
    lr = torch.tensor(0.01, device=d)
    b1 = torch.tensor(0.9, dtype=torch.float64, device=d)  # beta1 / momentum: float64 tensors
    wd = torch.tensor(0.01, dtype=torch.float64, device=d)  # weight_decay: the same
    steps = lambda: [torch.tensor(2.0, device=d) for _ in range(3)]  # noqa: E731
    pos = lambda: [t.abs() for t in _lists(d)]  # noqa: E731
    yield "multi_tensor_norm", (_lists(d), 2.0, True), {}
    yield "multi_tensor_norm", (_lists(d), float("inf"), False), {}
    yield "multi_tensor_norm", (_lists(d), 2.0, True, torch.tensor(2.0 ** -80, device=d)), {}
    yield "multi_tensor_scale_", (_lists(d), torch.tensor(0.5, device=d)), {}
    yield "multi_tensor_unscale_norm_", (_lists(d), torch.tensor(0.5, device=d),
                                         torch.zeros((), device=d), 2.0, True), {}
    yield "clip_grad_norm_", (_lists(d), 0.1, 2.0), {}
    yield "adam_", (_lists(d), _lists(d), _lists(d), pos(), pos(), [], steps(), lr, b1, 0.999,
                    wd, 1e-8, True, False, True), dict(stats=torch.zeros(3, 4, device=d))
    yield "adam_", (_lists(d, dtype=torch.float16), _lists(d, dtype=torch.float16), _lists(d),
                    pos(), [], _lists(d), steps(), lr, b1.float(), 0.999, torch.zeros((), device=d),
                    1e-8, False, True,
                    False), \
        dict(grad_scale=torch.tensor(4.0, device=d), found_inf=torch.zeros((), device=d))
    yield "sgd_", (_lists(d), _lists(d), _lists(d), [], lr, b1, 0.0, wd, True, False, False), {}
    yield "lamb_", (_lists(d), _lists(d), _lists(d), pos(), [], steps(), lr, b1, 0.999, 1e-6, wd,
                    True, True, True, False), dict(stats=torch.zeros(3, 4, device=d))
    yield "lars_", (_lists(d), _lists(d), _lists(d), [], lr, b1, 0.0, wd, False, 0.001, 1e-8,
                    True, False, False), dict(found_inf=torch.zeros((), device=d))
    yield "lars_", (_lists(d), _lists(d), _lists(d), [], lr, b1, 0.0, wd, False, 0.001, 1e-8,
                    True, False, False), dict(stats=torch.zeros(3, 4, device=d),
                                              trust_ratios=torch.rand(3, device=d))
    yield "lamb_moments_", (_lists(d), _lists(d), _lists(d), pos(), [], steps(), b1, 0.999, 1e-6,
                            wd, True, True), dict(grad_scale=torch.tensor(2.0, device=d))
    yield "lamb_apply_", (_lists(d), _lists(d), pos(), [], steps(), lr, torch.rand(3, device=d),
                          b1, 0.999, 1e-6, wd, True), {}


def _positional(op, args, kwargs):
    """Every argument by position: torch 2.11's Python custom ops (the Triton backend) index
    mutated arguments by position and raise IndexError for one passed by keyword."""
    rest = [kwargs.get(a.name, a.default_value) for a in op._schema.arguments[len(args):]]
    return (*args, *rest), {}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck_every_op(backend, device):
    ns = _namespace(backend)
    seen = set()
    for name, args, kwargs in samples(device):
        op = getattr(ns, name).default
        if backend == "triton":
            args, kwargs = _positional(op, args, kwargs)
        torch.library.opcheck(op, args, kwargs)
        seen.add(name)
    assert seen == set(fastdyn.ops.registry.OP_NAMES)


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    return x


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for t in value if isinstance(t, torch.Tensor)]
    return []


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_every_op_bumps_the_version_of_each_tensor_it_writes(backend, device):
    """As torch's in-place and foreach ops do: autograd then refuses a backward through a
    tensor changed after it was saved. The tensors an op only reads keep their versions; the
    native ops also leave those of a refused call (torch's custom_op, which wraps the Triton
    ops, bumps before the call)."""
    ns = _namespace(backend)
    for name, args, kwargs in samples(device):
        op = getattr(ns, name).default
        args, kwargs = _positional(op, args, kwargs)
        schema = op._schema.arguments
        written = {id(t) for a, v in zip(schema, args)
                   if a.alias_info is not None and a.alias_info.is_write for t in _tensors(v)}
        every = [t for v in args for t in _tensors(v)]
        before = [t._version for t in every]
        op(*args)
        for t, v in zip(every, before):  # (a Triton op may bump one twice: stats.copy_)
            assert (t._version > v) == (id(t) in written), (name, [a.name for a in schema])
        assert bool(written) == (name != "multi_tensor_norm"), name
    # a refused call: the same tensor twice in a written list
    x = torch.ones(3, device=device)
    with pytest.raises(ValueError, match="share memory"):
        ns.multi_tensor_scale_.default([x, x], torch.tensor(2.0, device=device))
    assert x._version == 0 or backend == "triton"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_an_inference_tensor_is_refused_before_anything_is_written(backend, device):
    """A tensor made under torch.inference_mode cannot be updated in place outside it (its
    version cannot move): every backend refuses it before writing the others (torch's
    foreach scales the tensors before it first; the Triton kernels wrote it, the reference
    wrote the tensors before it). Inside inference mode the write is fine."""
    with torch.inference_mode():
        frozen = torch.ones(3, device=device)
    normal = torch.ones(3, device=device)
    scale = torch.tensor(2.0, device=device)
    with use_backend(backend):
        with pytest.raises(RuntimeError, match=r"tensors\[1\] is an inference tensor"):
            fastdyn.ops.multi_tensor_scale_([normal, frozen], scale)
        if backend != "reference":  # the op itself (Triton's runs the C++ checks)
            with pytest.raises(RuntimeError, match=r"tensors\[1\] is an inference tensor"):
                _namespace(backend).multi_tensor_scale_.default([normal, frozen], scale)
        params = [torch.ones(3, device=device), frozen]
        grads = [torch.ones(3, device=device) for _ in params]
        buffers = [torch.zeros(3, device=device) for _ in params]
        with pytest.raises(RuntimeError, match=r"params\[1\] is an inference tensor"):
            fastdyn.ops.sgd_(params, grads, buffers, [], torch.tensor(0.1, device=device), 0.9,
                             0.0, 0.0, False, False, True)
        assert torch.equal(normal.cpu(), torch.ones(3)) and torch.equal(frozen.cpu(), torch.ones(3))
        assert torch.equal(params[0].cpu(), torch.ones(3)) and not buffers[0].any()
        with torch.inference_mode():
            fastdyn.ops.multi_tensor_scale_([normal, frozen], scale)
    assert torch.equal(frozen.cpu(), torch.full((3,), 2.0))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_a_zero_grad_scale_unscales_to_inf_on_every_backend(backend, device):
    """grad_scale 0: 1/0 is inf in the kernels, so the update is inf (Adam's NaN); the
    reference's Python division raised ZeroDivisionError after the steps had advanced."""
    params = [torch.ones(3, device=device)]
    steps = [torch.zeros((), device=device)]
    with use_backend(backend):
        fastdyn.ops.adam_(params, [torch.ones(3, device=device)], [torch.zeros(3, device=device)],
                          [torch.zeros(3, device=device)], [], [], steps,
                          torch.tensor(0.1, device=device), 0.9, 0.999, 0.0, 1e-8, False, False,
                          True, torch.tensor(0.0, device=device))
        sgd_params = [torch.ones(3, device=device)]
        fastdyn.ops.sgd_(sgd_params, [torch.ones(3, device=device)], [], [],
                         torch.tensor(0.1, device=device), 0.0, 0.0, 0.0, False, False, True,
                         torch.tensor(0.0, device=device))
    assert float(steps[0]) == 1.0
    assert params[0].isnan().all(), params[0]
    assert torch.equal(sgd_params[0].cpu(), torch.full((3,), -math.inf))


def test_fake_kernels_check_arguments_like_the_kernels():
    """A list mixing a real and a meta tensor dispatches to the fake kernel: it must refuse it
    as the CPU kernel refuses mixed devices (it used to return an uninitialised norm)."""
    for name, args, kwargs in samples("cpu"):
        op = getattr(torch.ops.fastdyn, name).default
        mixed = (list(args[0]), *args[1:])
        mixed[0][-1] = mixed[0][-1].to("meta")
        with pytest.raises(ValueError, match=r"\[2\] is on meta but the other tensors are on cpu"):
            op(*mixed, **kwargs)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("bad", ["int tensor", "short list", "view with gaps"])
def test_fake_kernels_refuse_what_the_kernels_refuse(backend, device, bad):
    """Under FakeTensorMode (torch.compile's tracing) each op raises the error its kernel
    raises; the Triton ops' fakes used to check nothing, so a bad argument traced cleanly
    and failed only when the compiled graph ran."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def outcome(op, args, kwargs):
        try:
            op(*args, **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            return type(e)
        return None

    for name, args, kwargs in samples(device):
        args = (list(args[0]), *args[1:])
        last = args[0][-1]
        if bad == "int tensor":
            args[0][-1] = torch.zeros(last.shape, dtype=torch.int32, device=device)
        elif bad == "view with gaps":  # (the same shape, every other element of a buffer)
            k = next(k for k, t in enumerate(args[0]) if t.numel() > 1)
            t = args[0][k]
            args[0][k] = torch.zeros((*t.shape, 2), dtype=t.dtype, device=device)[..., 0]
        else:
            args[0].pop()
        op = getattr(_namespace(backend), name).default
        args, kwargs = _positional(op, args, kwargs)
        real = outcome(op, args, kwargs)
        mode = FakeTensorMode()
        fake_args, fake_kwargs = torch.utils._pytree.tree_map_only(
            torch.Tensor, mode.from_tensor, (args, kwargs))
        with mode:
            fake = outcome(op, fake_args, fake_kwargs)
        if bad != "short list" or name not in ("multi_tensor_norm", "multi_tensor_scale_",
                                               "multi_tensor_unscale_norm_", "clip_grad_norm_"):
            assert real is not None, (name, bad)  # (a shorter list of norm inputs is fine)
        assert fake == real, (name, bad, real, fake)


def test_fake_kernels_run_on_meta_tensors():
    """All on meta (a model built on the meta device): the ops trace, with outputs on meta."""
    for name, args, kwargs in samples("cpu"):
        out = getattr(torch.ops.fastdyn, name).default(
            *_to_meta(args), **{k: _to_meta(v) for k, v in kwargs.items()})
        for t in (out if isinstance(out, tuple) else (out,)):
            assert t is None or t.device.type == "meta"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES + [("native", "meta")])
def test_mixed_step_dtypes_are_refused(backend, device):
    """The CUDA kernels read every step with the width of state_steps[0]: a float64 step beside
    float32 ones must be an error on every backend, not a misread on one."""
    ns = _namespace(backend)
    checked = set()
    for name, args, kwargs in samples("cpu" if device == "meta" else device):
        if device == "meta":
            args, kwargs = _to_meta(args), {k: _to_meta(v) for k, v in kwargs.items()}
        op = getattr(ns, name).default
        schema_args = [a.name for a in op._schema.arguments]
        if "state_steps" not in schema_args:
            continue
        args = list(args)
        at = schema_args.index("state_steps")
        args[at] = [s.to(torch.float64) if i == 1 else s for i, s in enumerate(args[at])]
        if backend == "triton":
            args, kwargs = _positional(op, tuple(args), kwargs)
        with pytest.raises(TypeError, match=r"state_steps\[1\] is (torch.float64|Double) but "
                                            r"state_steps\[0\] is (torch.float32|Float)"):
            op(*args, **kwargs)
        checked.add(name)
    assert checked == {"adam_", "lamb_", "lamb_moments_", "lamb_apply_"}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES + [("native", "meta")])
def test_state_of_another_dtype_is_refused_before_anything_changes(backend, device):
    """Optimizer state must have the params' dtype (or be float32 beside float16/bfloat16
    params): float16 moments of float32 params are an error on every backend, raised before
    the step counters move."""
    ns = _namespace(backend)
    checked = set()
    state_lists = {"exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "momentum_buffers"}
    for name, args, kwargs in samples("cpu" if device == "meta" else device):
        op = getattr(ns, name).default
        schema_args = [a.name for a in op._schema.arguments]
        if not state_lists & set(schema_args) or args[0][0].dtype != torch.float32:
            continue
        args = [[t.half() for t in a] if n in state_lists else a for n, a in zip(schema_args, args)]
        if device == "meta":
            args, kwargs = _to_meta(args), {k: _to_meta(v) for k, v in kwargs.items()}
        steps = args[schema_args.index("state_steps")] if "state_steps" in schema_args else []
        before = [s.clone() for s in steps]
        if backend == "triton":
            args, kwargs = _positional(op, tuple(args), kwargs)
        with pytest.raises(TypeError, match=r"optimizer state has dtype (torch.float16|Half) for "
                                            r"params of dtype (torch.float32|Float)"):
            op(*args, **kwargs)
        if device != "meta":
            assert all(torch.equal(a, b) for a, b in zip(steps, before)), name
        checked.add(name)
    assert checked == {"adam_", "sgd_", "lamb_", "lars_", "lamb_moments_", "lamb_apply_"}


def _snapshot(args, kwargs):
    return [t.clone() for a in (*args, *kwargs.values())
            for t in (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_a_written_tensor_twice_is_refused_before_anything_changes(backend, device):
    """Two entries of a list an op writes that share memory ran their chunks at once on the
    CPU and lost updates (scale_([x, x]) differed from torch in half the runs): every
    writing op refuses them, naming both, before it writes anything."""
    ns = _namespace(backend)
    checked = set()
    for name, args, kwargs in samples(device):
        if name == "multi_tensor_norm":
            continue
        args = list(args)
        first = list(args[0])
        first[2] = first[1][3:4]  # a view into entry 1, the shape of entry 2
        args[0] = first
        before = _snapshot(args, kwargs)
        op = getattr(ns, name).default
        call_args, call_kwargs = (_positional(op, tuple(args), kwargs) if backend == "triton"
                                  else (args, kwargs))
        with pytest.raises(ValueError, match=r"(params|tensors|grads)\[1\] and "
                                             r"(params|tensors|grads)\[2\] share memory"):
            op(*call_args, **call_kwargs)
        after = _snapshot(args, kwargs)
        assert all(torch.equal(a, b) for a, b in zip(after, before)), name
        checked.add(name)
    assert checked == set(fastdyn.ops.registry.OP_NAMES) - {"multi_tensor_norm"}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_state_sharing_a_params_memory_is_refused(backend, device):
    ns = _namespace(backend)
    name, args, kwargs = next(s for s in samples(device) if s[0] == "adam_")
    args = list(args)
    args[2] = [args[0][0], *args[2][1:]]  # exp_avgs[0] is params[0]
    op = ns.adam_.default
    if backend == "triton":
        args, kwargs = _positional(op, tuple(args), kwargs)
    with pytest.raises(ValueError, match=r"params\[0\] and exp_avgs\[0\] share memory"):
        op(*args, **kwargs)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_a_scalar_inside_a_written_tensor_is_refused(backend, device):
    """On CUDA every block reads the scalar, some after others wrote it: scale_([x], x[0])
    scaled the chunks after the first by the new x[0]. Scalars that are only read may share
    memory with each other (lr and grad_scale one tensor)."""
    ns = _namespace(backend)
    x = torch.full((100,), 2.0, device=device)
    with pytest.raises(ValueError, match=r"scale and tensors\[0\] share memory .* the op writes "
                                         r"one of them"):
        ns.multi_tensor_scale_.default([x], x[0])
    assert (x == 2.0).all()
    found_inf = torch.zeros(4, device=device)
    with pytest.raises(ValueError, match=r"found_inf and tensors\[0\] share memory"):
        ns.multi_tensor_unscale_norm_.default([found_inf], torch.tensor(0.5, device=device),
                                              found_inf[0], 2.0, False)
    p, g = [torch.ones(3, device=device)], [torch.ones(3, device=device)]
    one, zero = torch.tensor(1.0, device=device), torch.tensor(0.0, device=device)
    # lr, momentum (not read: no buffers) and grad_scale: one tensor, read three times
    args = (p, g, [], [], one, one, 0.0, zero, False, False, False, one, None, None)
    ns.sgd_.default(*args)
    torch.testing.assert_close(p[0], torch.zeros(3, device=device))
    with pytest.raises(ValueError, match=r"lr and params\[0\] share memory"):
        ns.sgd_.default(p, g, [], [], p[0][0], one, 0.0, zero, False, False, False, None, None, None)
    with pytest.raises(ValueError, match=r"(weight_decay and params\[0\]|params\[0\] and weight_decay) share memory"):
        ns.sgd_.default(p, g, [], [], one, one, 0.0, p[0][1], False, False, False, None, None, None)
    buf = [torch.zeros(3, dtype=torch.float64, device=device)]
    p64, g64 = [torch.ones(3, dtype=torch.float64, device=device)], [torch.ones(3, dtype=torch.float64, device=device)]
    with pytest.raises(ValueError, match=r"(momentum and momentum_buffers\[0\]|momentum_buffers\[0\] and momentum) share memory"):
        ns.sgd_.default(p64, g64, buf, [], one, buf[0][1], 0.0, zero, False, False, False, None,
                        None, None)
    assert not buf[0].any()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_the_same_tensor_twice_is_refused_by_scale_and_allowed_by_norm(backend, device):
    x = torch.randn(100_003, device=device)
    ns = _namespace(backend)
    with pytest.raises(ValueError, match=r"tensors\[0\] and tensors\[1\] share memory"):
        ns.multi_tensor_scale_.default([x, x], torch.tensor(0.5, device=device))
    # reading a tensor twice is fine: the norm counts it twice, as torch's does
    total, _ = ns.multi_tensor_norm.default([x, x], 2.0, False)
    torch.testing.assert_close(total.double().cpu(),
                               torch.linalg.vector_norm(torch.cat([x, x]).double().cpu()),
                               rtol=2e-5, atol=0)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backend,device", [
    ("native", "meta"), ("triton", "meta"),  # the fake kernels
    pytest.param("native", "cuda", marks=_CUDA), pytest.param("triton", "cuda", marks=_CUDA)])
def test_an_empty_lamb_moments_takes_its_device_from_its_scalars(backend, device):
    """lamb_moments_ has no lr: with no params, grad_scale/found_inf name the device (it
    used to fall back to the CPU: the native op refused them as on another device, the
    Triton op returned its sums on the CPU)."""
    sums = _namespace(backend).lamb_moments_.default(
        [], [], [], [], [], [], torch.tensor(0.9, dtype=torch.float64, device=device), 0.999,
        1e-6, torch.zeros((), dtype=torch.float64, device=device), True, True,
        torch.tensor(2.0, device=device), torch.zeros((), device=device))
    assert sums.shape == (0, 3) and sums.device.type == device
    with use_backend(backend):  # the wrapper with no tensors at all: the same on each backend
        sums = fastdyn.ops.lamb_moments_([], [], [], [], [], [], 0.9, 0.999, 1e-6, 0.0, True, True)
    assert sums.shape == (0, 3) and sums.dtype == torch.float64
    with use_backend(backend):  # the wrapper given float beta1/weight_decay makes them there
        sums = fastdyn.ops.lamb_moments_([], [], [], [], [], [], 0.9, 0.999, 1e-6, 0.0, True, True,
                                         torch.tensor(2.0, device=device),
                                         torch.zeros((), device=device))
    assert sums.shape == (0, 3) and sums.device.type == device


def _bad_arguments(device):
    """(case, op, {argument: value -> bad value}, error type, message pattern): one bad
    argument of an otherwise good sample call each. The patterns take the C++ spelling of
    a dtype (Float) and the Python one (torch.float32): the native and Triton ops check in
    C++ (checks.h, optimizer_checks.h), the fake kernels and the reference in
    fastdyn/ops/checks.py, with the same messages."""
    other = "cpu" if device in ("meta", "cuda") else "meta"
    f32, f16, f64 = r"(torch\.float32|Float)", r"(torch\.float16|Half)", r"(torch\.float64|Double)"

    def step_elsewhere(steps):
        return [torch.tensor(2.0, dtype=s.dtype, device=other) if i == 1 else s
                for i, s in enumerate(steps)]

    return [
        ("grads of another dtype", "adam_", 0, dict(grads=lambda gs: [g.double() for g in gs]),
         TypeError, rf"grads have dtype {f64} but params have {f32}"),
        ("a step on another device", "adam_", 0, dict(state_steps=step_elsewhere),
         ValueError, rf"state_steps\[1\] is on {other}(:0)? but params are on {device}"),
        ("a step on another device", "lamb_", 0, dict(state_steps=step_elsewhere),
         ValueError, rf"state_steps\[1\] is on {other}(:0)? but params are on {device}"),
        ("stats not contiguous", "lamb_", 0,
         dict(stats=lambda s: torch.zeros(4, 3, device=s.device).t()),
         ValueError, r"stats must be a contiguous float32 tensor of shape \[3, 4\], got shape \[3, 4\]"),
        ("stats of the wrong shape", "lars_", 1, dict(stats=lambda s: s[:, :3].contiguous()),
         ValueError, r"stats must be a contiguous float32 tensor of shape \[3, 4\], got shape \[3, 3\]"),
        ("stats of the wrong shape", "adam_", 0, dict(stats=lambda s: s[:2].contiguous()),
         ValueError, r"stats must be a contiguous float32 tensor of shape \[3, 4\], got shape \[2, 4\]"),
        ("stats of another dtype", "adam_", 0, dict(stats=lambda s: s.double()),
         TypeError, rf"stats must be float32, got {f64}"),
        ("float16 master params", "adam_", 1, dict(master_params=lambda ms: [m.half() for m in ms]),
         TypeError, rf"master_params must be float32, got {f16}"),
        ("master params of float32 params", "adam_", 0,
         dict(master_params=lambda ms, args: [p.clone() for p in args["params"]]),
         TypeError, rf"master_params are for float16/bfloat16 params, got params of dtype {f32}"),
        ("float16 state beside master params", "sgd_", 0,
         dict(params=lambda ps: [p.half() for p in ps], grads=lambda gs: [g.half() for g in gs],
              momentum_buffers=lambda bs: [b.half() for b in bs],
              master_params=lambda ms, args: [p.float() for p in args["params"]]),
         TypeError, rf"with master_params the optimizer state must be float32, got {f16}"),
        ("amsgrad without max_exp_avg_sqs", "adam_", 0, dict(max_exp_avg_sqs=lambda ms: []),
         ValueError, r"max_exp_avg_sqs has 0 tensors but params has 3"),
        ("amsgrad with too few max_exp_avg_sqs", "adam_", 0, dict(max_exp_avg_sqs=lambda ms: ms[:2]),
         ValueError, r"max_exp_avg_sqs has 2 tensors but params has 3"),
    ]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES + [("native", "meta"),
                                                             ("triton", "meta"),
                                                             ("reference", "cpu")])
def test_bad_update_arguments_are_refused_alike_before_anything_changes(backend, device):
    """Each op's argument checks, on every backend: the same error type and message, raised
    before a tensor is written."""
    import inspect

    import fastdyn.reference

    by_name = {}
    for name, args, kwargs in samples("cpu" if device == "meta" else device):
        if device == "meta":
            args, kwargs = _to_meta(args), {k: _to_meta(v) for k, v in kwargs.items()}
        by_name.setdefault(name, []).append((args, kwargs))
    for case, name, which, changes, error, pattern in _bad_arguments(device):
        schema = [a.name for a in getattr(torch.ops.fastdyn, name).default._schema.arguments]
        args, kwargs = by_name[name][which]
        named = dict(zip(schema, args), **kwargs)
        for arg, change in changes.items():
            value = named.get(arg)
            # (stats: the sample's, or a good one to spoil)
            if arg == "stats" and value is None:
                value = torch.zeros(3, 4, device=named["params"][0].device)
            named[arg] = (change(value, named) if len(inspect.signature(change).parameters) == 2
                          else change(value))
        call_args = [named[a] for a in schema[:len(args)]]
        call_kwargs = {a: named[a] for a in schema[len(args):] if a in named}
        before = _snapshot(call_args, call_kwargs)
        if backend == "reference":
            op = getattr(fastdyn.reference, name)
        else:
            op = getattr(_namespace(backend), name).default
            if backend == "triton":
                call_args, call_kwargs = _positional(op, tuple(call_args), call_kwargs)
        with pytest.raises(error, match=pattern):
            op(*call_args, **call_kwargs)
        after = _snapshot(call_args, call_kwargs)
        assert all(a.is_meta or torch.equal(a, b) for a, b in zip(after, before)), (name, case)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "non-leaf"])
def test_a_tensor_that_requires_grad_is_not_written_in_grad_mode(backend, device, leaf):
    """The ops have no derivative: torch refuses an in-place write to a leaf that requires
    grad, and records one to a non-leaf; fastdyn's had written both (a non-leaf's backward
    then gave the gradient of the unscaled tensor: [1, 1, 1] for [2, 2, 2]). Nothing is
    written; under no_grad, as optimizer steps run, the write is fine."""
    w = torch.ones(3, device=device, requires_grad=True)
    target = w if leaf else w * 1
    other = torch.ones(3, device=device)
    scale = torch.tensor(2.0, device=device)
    with use_backend(backend):
        with pytest.raises(RuntimeError, match=r"tensors\[1\] requires grad and the op writes it"):
            fastdyn.ops.multi_tensor_scale_([other, target], scale)
        if backend == "native":  # (the op itself; a Triton custom_op runs with grad mode off)
            with pytest.raises(RuntimeError, match=r"tensors\[1\] requires grad"):
                torch.ops.fastdyn.multi_tensor_scale_([other, target], scale)
        assert torch.equal(other.cpu(), torch.ones(3))
        assert torch.equal(target.detach().cpu(), torch.ones(3))
        with torch.no_grad():
            fastdyn.ops.multi_tensor_scale_([other, target], scale)
    assert torch.equal(target.detach().cpu(), torch.full((3,), 2.0))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_stats_and_trust_ratios_may_not_share_memory_with_what_the_op_writes(backend, device):
    """stats (written) and trust_ratios (read while params are written) were left out of the
    overlap check: stats viewing a param overwrote it, and a ratio inside params[0] was read
    before or after its write depending on the backend."""
    from ops.update_harness import make_group

    from fastdyn.ops.registry import for_device
    group = make_group([8, 8], torch.float32, device, buffers=1, steps=False)
    lr = torch.tensor(0.1, device=device)
    stats = group["params"][1].view(2, 4)
    args = (group["params"], group["grads"], group["state0"], [], lr,
            torch.tensor(0.9, dtype=torch.float64, device=device), 0.0,
            torch.zeros((), device=device), False)
    before = [t.clone() for t in group["params"]]
    with use_backend(backend):
        with pytest.raises(ValueError, match=r"stats and params\[1\] share memory"):
            for_device("sgd_", torch.device(device))(*args, False, False, stats=stats)
        with pytest.raises(ValueError, match=r"(params\[0\] and trust_ratios|trust_ratios and params\[0\]) share memory"):
            for_device("lars_", torch.device(device))(
                *args, 0.001, 1e-8, False, False, False,
                trust_ratios=group["params"][0][:2])
    assert all(torch.equal(a, b) for a, b in zip(before, group["params"]))


@pytest.mark.triton
@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if p.values[0] == "triton"])
def test_a_direct_triton_call_refuses_float64_before_writing(backend, device):
    """fastdyn.ops hands float64 to the native kernels; torch.ops.fastdyn_triton itself had
    scaled the float32 tensor of [float32, float64] and then refused the float64 one."""
    ts = [torch.ones(3, device=device), torch.ones(3, dtype=torch.float64, device=device)]
    with pytest.raises(TypeError, match=r"tensors\[1\] has dtype torch.float64"):
        _namespace(backend).multi_tensor_scale_.default(ts, torch.tensor(2.0, device=device))
    assert torch.equal(ts[0].cpu(), torch.ones(3))


def test_an_update_given_a_float_lr_names_it():
    from ops.update_harness import make_group

    group = make_group([3], torch.float32, "cpu", buffers=1, steps=False)
    with pytest.raises(TypeError, match="lr must be a tensor, got float"):
        fastdyn.ops.sgd_(group["params"], group["grads"], group["state0"], [], 0.1, 0.9, 0.0,
                         0.0, False, False, False)
