"""fastdyn.optim.LARS against a timm-style foreach LARS and torch.compile of the
single-tensor reference step."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "timm-style_foreach", "torch.compile_reference"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_lars(benchmark, set_name, impl):
    run(benchmark, "lars", set_name, impl.replace("_", " "))
