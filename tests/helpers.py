"""Shared test helpers: which (backend, device) pairs run here, tolerances per dtype, and
tensor factories."""

from __future__ import annotations

import os

import pytest
import torch

import fastdyn
from fastdyn.ops.backend import triton_available

HAS_CUDA = torch.cuda.is_available()
BUILT_CUDA = fastdyn._extension.WITH_CUDA
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible)")


def backend_devices():
    """(backend, device) pairs with kernels here; CUDA ones are marked and skipped without a GPU."""
    out = [pytest.param("native", "cpu", id="native-cpu")]
    if triton_available() and INTERPRETED:
        out.append(pytest.param("triton", "cpu", id="triton-interp", marks=pytest.mark.triton))
    out.append(pytest.param("native", "cuda", id="native-cuda",
                            marks=[pytest.mark.cuda,
                                   pytest.mark.skipif(not (HAS_CUDA and BUILT_CUDA),
                                                      reason="needs a GPU and the CUDA kernels")]))
    if not INTERPRETED:
        out.append(pytest.param("triton", "cuda", id="triton-cuda",
                                marks=[pytest.mark.cuda, pytest.mark.triton,
                                       pytest.mark.skipif(not (HAS_CUDA and triton_available()),
                                                          reason="needs a GPU and Triton")]))
    return out


BACKEND_DEVICES = backend_devices()
# for hundreds of tensors: Triton's interpreter takes 20-40 s on 700 tiny ones
NOT_INTERPRETED = [p for p in BACKEND_DEVICES if p.id != "triton-interp"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Relative / absolute tolerance of a value stored in `dtype` against the float64 truth:
# about two units in the last place of the dtype (one for rounding the result, one for
# the fp32 arithmetic before it).
STORE_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 1e-6),
    torch.float16: (2e-3, 2e-5),
    torch.bfloat16: (1.6e-2, 1e-4),
}
# Norms are float32 whatever the input dtype (fp32 accumulation): fp32 rounding over up to
# ~1e5 terms summed in blocks.
NORM_RTOL = 2e-5


def supports(backend: str, dtype: torch.dtype) -> bool:
    return not (backend == "triton" and dtype == torch.float64)


def assert_close(actual, expected, dtype, scale=1.0, msg=""):
    rtol, atol = STORE_TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol * scale,
                               atol=atol * scale, msg=msg or None)


def rand_tensors(sizes, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
            for n in sizes]


def fullgraph_step(opt):
    """`opt.step` under torch.compile(fullgraph=True), and the list of graphs dynamo has
    traced for it so far (a backend that runs each graph as traced, and counts it)."""
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    @torch.compile(fullgraph=True, backend=count)
    def step():
        opt.step()

    return step, graphs
