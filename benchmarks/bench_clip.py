"""fastdyn.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_(foreach=True), when the
norm is under max_norm (no scaling pass) and when it clips."""
import pytest

from conftest import SETS, run

IMPLS = ["fastdyn", "fastdyn_triton", "torch_foreach"]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["clip", "clip-clipping"])
def test_clip(benchmark, op, set_name, impl):
    run(benchmark, op, set_name, impl.replace("_", " "))
