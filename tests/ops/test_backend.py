"""Which backend runs an op (fastdyn/ops/backend.py): the default per device,
FASTDYN_BACKEND, and use_backend blocks, nested and left by an exception."""

import threading

import pytest
import torch

from fastdyn import reference
from fastdyn.ops import registry, use_backend
from fastdyn.ops.backend import backend_for

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
