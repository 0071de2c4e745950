"""Which backend runs an op (fastdyn/ops/backend.py): the default per device,
FASTDYN_BACKEND, and use_backend blocks, nested and left by an exception."""

import threading

import pytest
import torch

import fastdyn
from fastdyn import reference
from fastdyn.ops import registry, use_backend
from fastdyn.ops.backend import backend_for
from helpers import BACKEND_DEVICES, INTERPRETED

CPU = torch.device("cpu")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("FASTDYN_BACKEND", raising=False)


def test_cpu_tensors_use_the_native_kernels_by_default(no_env):
    assert backend_for(CPU) == "native"
    assert registry.for_device("multi_tensor_norm", CPU) is torch.ops.fastdyn.multi_tensor_norm
    with use_backend(None):  # None: the default choice
        assert backend_for(CPU) == "native"


@pytest.mark.parametrize("value,expected", [("reference", "reference"), ("ref", "reference"),
                                            ("triton", "triton"), ("cpu", "native"),
                                            (" Native ", "native")])
def test_fastdyn_backend_forces_one(monkeypatch, value, expected):
    monkeypatch.setenv("FASTDYN_BACKEND", value)
    assert backend_for(CPU) == expected
    with use_backend("native"):  # a block's choice wins over the variable
        assert backend_for(CPU) == "native"
    with use_backend(None):  # and None there is the variable's choice again
        assert backend_for(CPU) == expected
    assert backend_for(CPU) == expected


def test_fastdyn_backend_reference_runs_the_reference(monkeypatch):
    monkeypatch.setenv("FASTDYN_BACKEND", "reference")
    assert registry.for_device("clip_grad_norm_", CPU).__wrapped__ is reference.clip_grad_norm_


def test_unknown_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown fastdyn backend 'cudnn'"):
        with use_backend("cudnn"):
            pass
    monkeypatch.setenv("FASTDYN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="unknown fastdyn backend 'cudnn'"):
        backend_for(CPU)


def test_nested_blocks_restore_the_enclosing_choice(no_env):
    with use_backend("reference"):
        assert backend_for(CPU) == "reference"
        with use_backend("triton"):
            assert backend_for(CPU) == "triton"
            with use_backend(None):
                assert backend_for(CPU) == "native"
            assert backend_for(CPU) == "triton"
        assert backend_for(CPU) == "reference"
        assert registry.for_device("clip_grad_norm_", CPU).__wrapped__ is reference.clip_grad_norm_
    assert backend_for(CPU) == "native"


def test_an_exception_leaves_the_block_and_its_backend(no_env):
    class Boom(Exception):
        pass

    with use_backend("triton"):
        with pytest.raises(Boom):
            with use_backend("reference"):
                raise Boom
        assert backend_for(CPU) == "triton"
    assert backend_for(CPU) == "native"
    with pytest.raises(Boom):
        with use_backend("reference"):
            raise Boom
    assert backend_for(CPU) == "native"


def test_a_block_is_its_threads_own(no_env):
    seen = []
    with use_backend("reference"):
        t = threading.Thread(target=lambda: seen.append(backend_for(CPU)))
        t.start()
        t.join()
    assert seen == ["native"]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_every_backend_compiles_fullgraph(backend, device, grad_mode):
    """A norm, clip_grad_norm_ and an optimizer step trace whole on every kernel backend, in
    grad mode too: the Triton backend's refusal of bad writes asked
    torch.is_inference_mode_enabled(), which dynamo cannot trace (no norm compiled in grad
    mode). (The float64 reference reads its scalars on the host: not for compiled code.)"""
    torch._dynamo.reset()
    xs = [torch.randn(10, device=device), torch.randn(3, 3, device=device)]
    p = torch.nn.Parameter(torch.randn(7, device=device))
    opt = fastdyn.optim.AdamW([p], lr=torch.tensor(1e-2, device=device))
    with use_backend(backend), torch.set_grad_enabled(grad_mode):
        eager_norm = fastdyn.multi_tensor_l2norm(xs)[0]
        norm = torch.compile(lambda: fastdyn.multi_tensor_l2norm(xs)[0], backend="eager",
                             fullgraph=True)()
        torch.testing.assert_close(norm, eager_norm, rtol=0, atol=0)
        p.grad = torch.full_like(p, 3.0)
        before = p.detach().clone()
        clipped = torch.compile(lambda: fastdyn.clip_grad_norm_([p], 1.0), backend="eager",
                                fullgraph=True)()
        torch.testing.assert_close(clipped, p.grad.new_tensor(3.0 * 7 ** 0.5), rtol=1e-6, atol=0)
        torch.compile(opt.step, backend="eager", fullgraph=True)()
    assert not torch.equal(p.detach(), before)


def test_triton_forced_where_it_cannot_run_says_why(monkeypatch):
    """Triton on CPU tensors without its interpreter failed deep inside Triton ("0 active
    drivers"), naming neither the backend nor the fix; nothing is written."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    opt = fastdyn.optim.SGD([p], lr=0.1, momentum=0.9)
    with use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4))
    with use_backend("triton"), pytest.raises(RuntimeError, match="Triton backend"):
        fastdyn.multi_tensor_l2norm([p.grad])


@pytest.mark.triton
@pytest.mark.skipif(not INTERPRETED, reason="compares with the C++ kernels on the CPU: Triton's "
                    "interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("AdamW", dict(lr=1e-2)),
                                     ("LAMB", dict(lr=1e-2)), ("LARS", dict(lr=0.1, weight_decay=1e-2))])
def test_triton_rounds_bfloat16_as_the_native_kernels(name, kw):
    """Triton's interpreter truncates float32 to bfloat16 (compiled kernels round to nearest
    even): 70-85% of bf16 params and states were an ulp or more off the C++ kernels' after
    three steps. Rounded alike, only the float32 math's order differs (FMA contraction in
    C++): a handful of elements, an ulp or a few once it compounds over the steps."""
    def run(backend):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n).bfloat16()) for n in (1000, 37, 4099)]
        opt = getattr(fastdyn.optim, name)(ps, **kw)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            with use_backend(backend):
                opt.step()
        return [t for p in ps for k, t in sorted(opt.state[p].items()) if k != "step"] + ps

    ours, native = run("triton"), run("native")
    n = sum(t.numel() for t in ours)
    differ = sum((a != b).sum().item() for a, b in zip(ours, native))
    assert differ <= n // 200, f"{differ} of {n} bf16 values differ from the native kernels'"
    for a, b in zip(ours, native):
        # (a one-ulp difference in a moment grows over the steps: 4 ulps seen on torch 2.11)
        torch.testing.assert_close(a, b, rtol=2 ** -3, atol=1e-6)


@pytest.mark.triton
@pytest.mark.skipif(not INTERPRETED, reason="compares with the C++ kernels on the CPU: Triton's "
                    "interpreter (TRITON_INTERPRET=1)")
def test_triton_unscales_bfloat16_as_the_native_kernels():
    torch.manual_seed(0)
    grads = (torch.randn(5000) * 1000).bfloat16()
    out = []
    for backend in ("triton", "native"):
        g, found = grads.clone(), torch.zeros(())
        with use_backend(backend):
            fastdyn.ops.multi_tensor_unscale_norm_([g], torch.tensor(1 / 3), found)
        out.append(g)
    assert torch.equal(out[0], out[1])
