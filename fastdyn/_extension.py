"""Loads the compiled kernels. Importing fastdyn._C registers torch.ops.fastdyn.* (CPU
always, CUDA when the build had a toolkit)."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from fastdyn import _C
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "fastdyn's compiled extension is missing or does not match this torch; build it with "
        "`pip install --no-build-isolation -e .` (see README.md)"
    ) from exc

WITH_CUDA: bool = bool(_C.with_cuda)


def hold(tensors: list):
    """Keeps C++ references to `tensors` while the returned object lives: an op call then
    passes them without a GIL round trip each (csrc/module.cpp, TensorRefs). Only for
    tensors nobody swaps: torch.utils.swap_tensors refuses a tensor referenced from C++."""
    return _C.TensorRefs(tensors)


# The optimizer plan's checks of objects swapped in (csrc/module.cpp): whether the values of a
# tuple of dicts, in order, are the objects of a list; DataAddresses(tensors).matches(tensors).
dict_values_are = _C.dict_values_are
DataAddresses = _C.DataAddresses


def build_info() -> dict:
    return {
        "cpu": True,
        "openmp": bool(_C.openmp),
        "cuda": WITH_CUDA,
        "cuda_version": _C.cuda_version,
        "cuda_archs": list(_C.cuda_archs()),
        "built_against_torch": _C.torch_version,
    }
