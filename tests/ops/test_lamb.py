"""lamb_ against the float64 reference of the contract: every option, zero-norm tensors,
dtypes, master weights, unscaling, found_inf, stats."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES
from ops.update_harness import assert_groups_close, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def lamb_args(wd, bias_correction, grad_averaging, trust_clip, always_adapt, lr=1e-2, **kw):
    def build(g):
        return ((g["params"], g["grads"], g["state0"], g["state1"], g["master_params"],
                 g["state_steps"], torch.tensor(lr, device=g["params"][0].device), 0.9, 0.999,
                 1e-6, wd, bias_correction, grad_averaging, trust_clip, always_adapt), kw)
    return build


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), wd=st.sampled_from([0.0, 0.01]),
       bias_correction=st.booleans(), grad_averaging=st.booleans(), trust_clip=st.booleans(),
       always_adapt=st.booleans(), master=st.booleans(),
       zero=st.sampled_from([None, "param", "grad"]))
def test_lamb_matches_reference(backend, device, sizes, dtype, wd, bias_correction, grad_averaging,
                                trust_clip, always_adapt, master, zero):
    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=2, master=master,
                       zero_param_index=0 if zero == "param" else None,
                       zero_grad_index=0 if zero == "grad" else None)
    ours, ref = run_both("lamb_", backend, device,
                         lamb_args(wd, bias_correction, grad_averaging, trust_clip, always_adapt), group)
    assert_groups_close(ours, ref, dtype, orig=group)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lamb_stats_and_unscale(backend, device):
    group = make_group([1000, 70001, 1], torch.float32, device, buffers=2)
    group["grads"] = [g * 1024 for g in group["grads"]]
    stats = torch.zeros(3, 4, device=device)
    ref_stats = torch.zeros(3, 4, device=device)
    scale = torch.tensor(1024.0, device=device)

    def build_with(st):
        return lambda g: lamb_args(0.01, True, True, False, False, grad_scale=scale, stats=st)(g)

    from fastdyn import reference
    from fastdyn.ops import use_backend
    from fastdyn.ops.registry import for_device
    from ops.update_harness import clone_group
    ours, ref = clone_group(group), clone_group(group)
    a, k = build_with(stats)(ours)
    with use_backend(backend):
        for_device("lamb_", torch.device(device))(*a, **k)
    a, k = build_with(ref_stats)(ref)
    reference.lamb_(*a, **k)
    assert_groups_close(ours, ref, torch.float32, orig=group)
    # a one-element tensor has no averaging: its ||u|| carries the fp32 error of one u
    torch.testing.assert_close(stats.cpu(), ref_stats.cpu(), rtol=1e-4, atol=1e-7)
    assert (stats[:, 3] > 0).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lamb_found_inf_touches_nothing(backend, device):
    group = make_group([100, 3], torch.float16, device, buffers=2, master=True)
    ours, _ = run_both("lamb_", backend, device,
                       lamb_args(0.01, True, True, False, False,
                                 found_inf=torch.ones((), device=device)), group)
    for key in ours:
        for a, b in zip(ours[key], group[key]):
            assert torch.equal(a, b), key
