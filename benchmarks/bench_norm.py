"""multi_tensor_l2norm against torch._foreach_norm + stack."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "torch_foreach"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_norm(benchmark, set_name, impl):
    run(benchmark, "norm", set_name, impl.replace("_", " "))
