"""fastdyn.optim.AdamW against torch.optim.AdamW fused, foreach and for-loop."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "torch_fused", "torch_foreach", "torch_for-loop"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
def test_adamw(benchmark, set_name, impl):
    run(benchmark, "adamw", set_name, impl.replace("_", " "))
