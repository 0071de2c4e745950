"""fastdyn.optim.LAMB (max_grad_norm) against a timm-style foreach LAMB and torch.compile of
the single-tensor reference step."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "timm-style_foreach", "torch.compile_reference"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_lamb(benchmark, set_name, impl):
    run(benchmark, "lamb", set_name, impl.replace("_", " "))
