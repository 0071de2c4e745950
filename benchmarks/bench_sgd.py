"""fastdyn.optim.SGD (momentum) against torch.optim.SGD fused, foreach and for-loop."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "torch_fused", "torch_foreach", "torch_for-loop"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_sgd(benchmark, set_name, impl):
    run(benchmark, "sgd", set_name, impl.replace("_", " "))
