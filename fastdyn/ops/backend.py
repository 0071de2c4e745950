"""Which implementation runs an op: the compiled kernels ("native": C++ on the CPU, CUDA
on the GPU), the Triton kernels, or the plain-PyTorch reference.

FASTDYN_BACKEND=native|cpu|cuda|triton|reference forces one; `use_backend` does the same
for a block of code (tests, benchmarks). By default CPU tensors use the C++ kernels and
CUDA tensors use the CUDA kernels when built, else Triton, else the reference.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

from fastdyn._extension import WITH_CUDA

BACKENDS = ("native", "triton", "reference")
_ALIASES = {"cpu": "native", "cuda": "native", "c++": "native", "native": "native",
            "triton": "triton", "reference": "reference", "ref": "reference"}

_local = threading.local()


def _normalise(name: str) -> str:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(
            f"unknown fastdyn backend {name!r}; choose one of native (cpu/cuda), triton, reference"
        )
    return _ALIASES[key]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_backend() -> str | None:
    override = getattr(_local, "backend", None)
    if override is not None:
        return override
    env = os.environ.get("FASTDYN_BACKEND")
    return _normalise(env) if env else None


def backend_for(device: torch.device) -> str:
    """The backend an op on tensors of `device` uses now."""
    forced = forced_backend()
    if forced is not None:
        return forced
    if device.type in ("cpu", "meta"):  # meta: the fake kernels (shapes only, as torch's)
        return "native"
    if device.type == "cuda":
        if WITH_CUDA:
            return "native"
        if triton_available():
            return "triton"
    return "reference"


def why_triton_cannot_run_on(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on `device_type` tensors in this process, or None."""
    if not triton_available():
        return "Triton is not installed"
    if device_type == "cpu" and not triton_interpreted():
        return "Triton cannot run on the CPU without TRITON_INTERPRET=1"
    return None


def check_triton_runs_on(device: torch.device) -> None:
    """A forced Triton backend that cannot run here fails inside Triton ("0 active drivers")
    without naming the backend or the fix: say both (the ops check before running)."""
    why = why_triton_cannot_run_on(device.type)
    if why is not None:
        raise RuntimeError(f"the Triton backend was forced (FASTDYN_BACKEND or use_backend) for "
                           f"{device.type} tensors, but {why} (Triton runs on a GPU, or on the "
                           "CPU in its interpreter: set TRITON_INTERPRET=1 before importing it)")


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run the block with every fastdyn op on backend `name` (None: the default choice)."""
    previous = getattr(_local, "backend", None)
    _local.backend = _normalise(name) if name is not None else None
    try:
        yield
    finally:
        _local.backend = previous


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device` in this process."""
    device = torch.device(device)
    out = []
    if device.type == "cpu" or (device.type == "cuda" and WITH_CUDA):
        out.append("native")
    if triton_available() and (device.type == "cuda" or triton_interpreted()):
        out.append("triton")
    out.append("reference")
    return out
