"""lamb_ against the float64 reference of the contract: every option, zero-norm tensors,
dtypes, master weights, unscaling, found_inf, stats."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES, NOT_INTERPRETED, STORE_TOL
from ops.update_harness import assert_groups_close, hyper, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def lamb_args(wd, bias_correction, grad_averaging, trust_clip, always_adapt, lr=1e-2, **kw):
    def build(g):
        return ((g["params"], g["grads"], g["state0"], g["state1"], g["master_params"],
                 g["state_steps"], torch.tensor(lr, device=g["params"][0].device),
                 hyper(0.9, g["params"][0].device), 0.999,
                 1e-6, hyper(wd, g["params"][0].device), bias_correction, grad_averaging,
                 trust_clip, always_adapt), kw)
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
def test_lamb_u_from_subnormal_fp16_moments(backend, device):
    """fp16 v below 6e-5 is subnormal (1-10 significant bits): u must come from v as stored,
    where the largest updates are (a v of two units, 1.2e-7, holds 5e-9 of new g^2 as 0)."""
    group = make_group([4099], torch.float16, device, buffers=2, seed=3)
    units = torch.arange(1, 4100, dtype=torch.float64) % 64 + 1
    group["state1"] = [(units * 2.0 ** -24).to(torch.float16).to(device)]
    group["grads"] = [g * 0.01 for g in group["grads"]]
    ours, ref = run_both("lamb_", backend, device, lamb_args(0.01, False, True, True, True), group)
    assert (ref["state1"][0].double() < 6.1e-5).all()
    assert_groups_close(ours, ref, torch.float16, orig=group)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lamb_found_inf_touches_nothing(backend, device):
    group = make_group([100, 3], torch.float16, device, buffers=2, master=True)
    ours, _ = run_both("lamb_", backend, device,
                       lamb_args(0.01, True, True, False, False,
                                 found_inf=torch.ones((), device=device)), group)
    for key in ours:
        for a, b in zip(ours[key], group[key]):
            assert torch.equal(a, b), key


def _run_split(group, device, wd, bias_correction, grad_averaging, trust_clip, always_adapt,
               grad_scale=None, found_inf=None, lr=1e-2):
    """LAMB as lamb_moments_, the ratios from its sums, lamb_apply_ (the sharded step's
    path) on the current backend; returns the sums."""
    from fastdyn.ops.registry import for_device
    from fastdyn.ops.trust_ratio import lamb_trust_ratios

    dev = torch.device(device)
    sums = for_device("lamb_moments_", dev)(
        group["params"], group["grads"], group["state0"], group["state1"], group["master_params"],
        group["state_steps"], hyper(0.9, dev), 0.999, 1e-6, hyper(wd, dev), bias_correction,
        grad_averaging, grad_scale, found_inf)
    norms = sums.sqrt()
    ratios = lamb_trust_ratios(norms[:, 1], norms[:, 2], wd != 0 or always_adapt, trust_clip)
    for_device("lamb_apply_", dev)(
        group["params"], group["state0"], group["state1"], group["master_params"],
        group["state_steps"], torch.tensor(lr, device=dev), ratios, hyper(0.9, dev), 0.999, 1e-6,
        hyper(wd, dev), bias_correction, found_inf)
    return sums


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), wd=st.sampled_from([0.0, 0.01]),
       bias_correction=st.booleans(), grad_averaging=st.booleans(), trust_clip=st.booleans(),
       always_adapt=st.booleans(), master=st.booleans())
def test_lamb_in_two_ops_matches_reference(backend, device, sizes, dtype, wd, bias_correction,
                                           grad_averaging, trust_clip, always_adapt, master):
    _check_two_ops(backend, device, sizes, dtype, wd, bias_correction, grad_averaging,
                   trust_clip, always_adapt, master)


# more tensors than one CUDA launch of LAMB's 6 lists holds (492), empty ones among them
MANY_TINY = [0 if i % 50 == 0 else 1 + i % 7 for i in range(700)]


@pytest.mark.parametrize("backend,device", NOT_INTERPRETED)
def test_lamb_in_two_ops_on_many_tiny_tensors(backend, device):
    """lamb_moments_'s per-tensor sums and lamb_apply_'s ratio lookups in a launch that is
    not the first (the sharded FSDP2 step's path), a zero param there."""
    _check_two_ops(backend, device, MANY_TINY, torch.float32, 0.01, True, True, False, False, False,
                   zero_param_index=601)


def _check_two_ops(backend, device, sizes, dtype, wd, bias_correction, grad_averaging,
                   trust_clip, always_adapt, master, zero_param_index=0):
    from fastdyn import reference
    from fastdyn.ops import use_backend
    from ops.update_harness import clone_group

    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=2, master=master,
                       zero_param_index=zero_param_index)
    ours, ref = clone_group(group), clone_group(group)
    with use_backend(backend):
        sums = _run_split(ours, device, wd, bias_correction, grad_averaging, trust_clip,
                          always_adapt)
    a, k = lamb_args(wd, bias_correction, grad_averaging, trust_clip, always_adapt)(ref)
    reference.lamb_(*a, **k)
    assert_groups_close(ours, ref, dtype, orig=group)
    # the sums: of g, of p before the step (tensor 0 is all zeros) and of u
    ref_sums = reference.lamb_moments_(*(lambda g: (
        g["params"], g["grads"], g["state0"], g["state1"], g["master_params"], g["state_steps"],
        hyper(0.9, g["params"][0].device), 0.999, 1e-6, hyper(wd, g["params"][0].device),
        bias_correction, grad_averaging))(clone_group(group)))
    assert sums.dtype == torch.float64 and sums.shape == (len(sizes), 3)
    # fp32 meets m = b1 m + g cancelling (7e-5 seen on a 1-element tensor). 16-bit state: m of
    # 16-bit inputs often lands on a tie, which fp64 and fp32 round to different neighbours;
    # one unit of m is two in u^2 of a 1-element tensor, more where m/sqrt(v) and wd p cancel
    # in u (fp16: 3.8e-3, 4 units, seen)
    rtol = 1e-4 if dtype == torch.float32 else 3 * STORE_TOL[dtype][0]
    torch.testing.assert_close(sums.cpu(), ref_sums.cpu(), rtol=rtol, atol=1e-10)
    assert float(sums[zero_param_index, 1]) == 0.0


def test_lamb_in_two_ops_is_lamb_bitwise_on_the_cpu():
    """The CPU kernels of both paths are the same chunk functions, in the same order."""
    from fastdyn.ops import use_backend
    from fastdyn.ops.registry import for_device
    from ops.update_harness import clone_group

    for dtype in DTYPES:
        group = make_group([70001, 5, 0, 1], dtype, "cpu", buffers=2)
        fused, split = clone_group(group), clone_group(group)
        with use_backend("native"):
            a, k = lamb_args(0.01, True, True, True, False)(fused)
            for_device("lamb_", torch.device("cpu"))(*a, **k)
            _run_split(split, "cpu", 0.01, True, True, True, False)
        for key in fused:
            for x, y in zip(fused[key], split[key]):
                assert torch.equal(x, y), (dtype, key)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_lamb_in_two_ops_found_inf_touches_nothing(backend, device):
    from fastdyn.ops import use_backend
    from ops.update_harness import clone_group

    group = make_group([100, 3], torch.float16, device, buffers=2, master=True)
    ours = clone_group(group)
    with use_backend(backend):
        sums = _run_split(ours, device, 0.01, True, True, False, False,
                          grad_scale=torch.tensor(2.0, device=device),
                          found_inf=torch.ones((), device=device))
    assert torch.isnan(sums).all()
    for key in ours:
        for a, b in zip(ours[key], group[key]):
            assert torch.equal(a, b), key
