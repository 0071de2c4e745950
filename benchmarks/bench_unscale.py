"""multi_tensor_unscale_norm_ against torch._amp_foreach_non_finite_check_and_unscale_ + _foreach_norm."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "torch_foreach"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_unscale(benchmark, set_name, impl):
    run(benchmark, "unscale", set_name, impl.replace("_", " "))
