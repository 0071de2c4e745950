"""multi_tensor_scale_: in-place scaling by a device scalar, skipped when it is 1."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastdyn
from fastdyn import reference
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES, DTYPES, assert_close, rand_tensors

SIZES = st.lists(st.sampled_from([0, 1, 3, 8191, 8193, 32769, 65537]), min_size=1, max_size=4)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), scale=st.sampled_from([0.5, 1e-3, 3.0, 0.0]))
def test_scale_matches_reference(backend, device, sizes, dtype, scale):
    ts = rand_tensors(sizes, dtype, device, seed=len(sizes))
    ref = [t.clone() for t in ts]
    s = torch.tensor(scale, device=device)
    with use_backend(backend):
        fastdyn.ops.multi_tensor_scale_(ts, s)
    reference.multi_tensor_scale_(ref, s)
    for a, b in zip(ts, ref):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_scale_one_changes_no_bit(backend, device):
    ts = rand_tensors([100, 7], torch.float16, device)
    ts[0][3] = float("nan")
    before = [t.clone() for t in ts]
    with use_backend(backend):
        fastdyn.ops.multi_tensor_scale_(ts, torch.tensor(1.0, device=device))
    for a, b in zip(ts, before):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nan_scale_reaches_every_element(backend, device):
    ts = rand_tensors([10, 20000], torch.float32, device)
    with use_backend(backend):
        fastdyn.ops.multi_tensor_scale_(ts, torch.tensor(float("nan"), device=device))
    assert all(t.isnan().all().item() for t in ts)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_scale_bad_scale(backend, device):
    with use_backend(backend):
        with pytest.raises(ValueError, match="scale must hold one value"):
            fastdyn.ops.multi_tensor_scale_([torch.ones(3, device=device)], torch.ones(2, device=device))
