"""adam_ (Adam and AdamW) against the float64 reference, every option and dtype."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES
from ops.update_harness import assert_groups_close, hyper, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def adam_args(amsgrad, maximize, decoupled, wd, lr=1e-2, grad_scale=None, found_inf=None, stats=None):
    def build(g):
        args = (g["params"], g["grads"], g["state0"], g["state1"], g["state2"] if amsgrad else [],
                g["master_params"], g["state_steps"],
                torch.tensor(lr, device=g["params"][0].device), hyper(0.9, g["params"][0].device),
                0.999, hyper(wd, g["params"][0].device), 1e-8, amsgrad,
                maximize, decoupled)
        return args, dict(grad_scale=grad_scale, found_inf=found_inf, stats=stats)
    return build


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), amsgrad=st.booleans(), maximize=st.booleans(),
       decoupled=st.booleans(), wd=st.sampled_from([0.0, 0.1]), master=st.booleans())
def test_adam_matches_reference(backend, device, sizes, dtype, amsgrad, maximize, decoupled, wd,
                                master):
    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=3, master=master)
    ours, ref = run_both("adam_", backend, device, adam_args(amsgrad, maximize, decoupled, wd), group)
    assert_groups_close(ours, ref, dtype, orig=group)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_adam_grad_scale_and_found_inf(backend, device):
    group = make_group([100, 7], torch.float32, device, buffers=3)
    scale = torch.tensor(256.0, device=device)
    scaled = dict(group, grads=[g * 256 for g in group["grads"]])
    ours, ref = run_both("adam_", backend, device, adam_args(False, False, True, 0.01, grad_scale=scale), scaled)
    plain, _ = run_both("adam_", backend, device, adam_args(False, False, True, 0.01), group)
    assert_groups_close(ours, ref, torch.float32, orig=group)
    assert_groups_close({"params": ours["params"]}, {"params": plain["params"]}, torch.float32)
    # found_inf set: nothing moves, steps included
    ours, _ = run_both("adam_", backend, device,
                       adam_args(False, False, True, 0.01, found_inf=torch.ones((), device=device)), group)
    for k in ours:
        for a, b in zip(ours[k], group[k]):
            assert torch.equal(a, b), k


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_adam_amsgrad_keeps_a_nan_max(backend, device):
    """A NaN in max_exp_avg_sq stays there and reaches its param, as torch.maximum propagates
    it: NaN is never hidden, even where exp_avg_sq is finite (a loaded or edited state). A
    plain `vmax > v ? vmax : v` would take v and hide it (no test caught that in the Triton
    kernel: scripts/mutants.py T3)."""
    group = make_group([5, 3], torch.float32, device, buffers=3)
    group["state2"][0][2] = float("nan")
    ours, ref = run_both("adam_", backend, device, adam_args(True, False, True, 0.0), group)
    assert ref["params"][0][2].isnan() and ref["state2"][0][2].isnan()
    for key in ("params", "state0", "state1", "state2"):
        for a, b in zip(ours[key], ref[key]):
            torch.testing.assert_close(a.cpu().double(), b.cpu().double(), rtol=2e-6, atol=1e-6,
                                       equal_nan=True, msg=lambda m: f"{key}: {m}")
