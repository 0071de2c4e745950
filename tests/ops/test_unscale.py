"""multi_tensor_unscale_norm_: one pass gives the unscaled gradients, found_inf and the norms."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastdyn
from fastdyn import reference
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES, DTYPES, NORM_RTOL, assert_close, rand_tensors

SIZES = st.lists(st.sampled_from([0, 1, 5, 8193, 32769, 65537]), min_size=1, max_size=4)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), ord=st.sampled_from([2.0, math.inf]))
def test_unscale_matches_reference(backend, device, sizes, dtype, ord):
    ts = rand_tensors(sizes, dtype, device, seed=7, scale=1024.0)
    ref = [t.clone() for t in ts]
    inv = torch.tensor(1 / 1024.0, device=device)
    found, ref_found = torch.zeros((), device=device), torch.zeros((), device=device)
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_unscale_norm_(ts, inv, found, ord, per_tensor=True)
    ref_total, ref_per = reference.multi_tensor_unscale_norm_(ref, inv, ref_found, ord, True)
    for a, b in zip(ts, ref):
        assert_close(a, b, dtype)
    torch.testing.assert_close(total.cpu(), ref_total.cpu(), rtol=NORM_RTOL, atol=1e-30)
    torch.testing.assert_close(per.cpu(), ref_per.cpu(), rtol=NORM_RTOL, atol=1e-30)
    assert found.item() == 0.0


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", DTYPES)
# (tensor, index): in the first chunk, the vector lanes, mid-tensor, a tail, and the last chunk
# of the list (a flag scan that stopped one chunk short had passed the others)
@pytest.mark.parametrize("where", [(0, 5), (1, 0), (1, 40000), (1, 69999), (2, 3)], ids=str)
def test_found_inf_set(backend, device, bad, dtype, where):
    ts = rand_tensors([33, 70000, 4], dtype, device)
    ts[where[0]][where[1]] = bad
    found = torch.zeros((), device=device)
    with use_backend(backend):
        total, _ = fastdyn.ops.multi_tensor_unscale_norm_(ts, torch.tensor(0.5, device=device), found)
    assert found.item() == 1.0
    assert not torch.isfinite(total).item()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_found_inf_never_cleared(backend, device):
    found = torch.ones((), device=device)
    with use_backend(backend):
        fastdyn.ops.multi_tensor_unscale_norm_(rand_tensors([10], torch.float32, device),
                                               torch.tensor(1.0, device=device), found)
    assert found.item() == 1.0


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_unscale_bad_found_inf(backend, device):
    with use_backend(backend):
        with pytest.raises((TypeError, ValueError), match="found_inf"):
            fastdyn.ops.multi_tensor_unscale_norm_([torch.ones(3, device=device)],
                                                   torch.tensor(1.0, device=device),
                                                   torch.zeros(2, device=device))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_unscale_found_inf_must_be_float32(backend, device):
    """found_inf is written as GradScaler's is: float64 is refused on every backend alike."""
    with use_backend(backend):
        with pytest.raises(TypeError, match=r"found_inf must be float32 \(as GradScaler's\), got "
                                            r"(torch.float64|Double)"):
            fastdyn.ops.multi_tensor_unscale_norm_([torch.ones(3, device=device)],
                                                   torch.tensor(1.0, device=device),
                                                   torch.zeros((), dtype=torch.float64, device=device))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_unscale_op_on_an_empty_list(backend, device):
    """Called directly, the op reaches the kernel of found_inf's device with no tensors: zero
    norms on that device, found_inf untouched."""
    import torch.library  # noqa: F401
    ns = torch.ops.fastdyn
    if backend == "triton":
        import fastdyn.ops.triton  # noqa: F401
        ns = torch.ops.fastdyn_triton
    found = torch.zeros((), device=device)
    total, per = ns.multi_tensor_unscale_norm_([], torch.tensor(0.5, device=device), found, 2.0, True)
    assert total.device == found.device and total.dtype == torch.float32 and total.item() == 0.0
    assert per.device == found.device and per.numel() == 0
    assert found.item() == 0.0


def test_unscale_fake_kernel_on_an_empty_list():
    found = torch.zeros((), device="meta")
    total, per = torch.ops.fastdyn.multi_tensor_unscale_norm_(
        [], torch.tensor(0.5, device="meta"), found, 2.0, True)
    assert total.device.type == "meta" and per.device.type == "meta" and per.shape == (0,)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float64_inv_scale_is_not_rounded_for_float64_grads(backend, device, dtype):
    """float64 gradients are unscaled by a float64 inv_scale as it is (it was rounded to
    float32 first: 1/3 then carries a 3e-8 relative error, 1e8 float64 ulps); the others by
    its float32 rounding, as torch's float32 inv_scale."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("Triton has no float64 kernels")
    ts = rand_tensors([1, 70, 8193], dtype, device, seed=3)
    expected = [t.double() * (1 / 3) for t in ts]
    inv = torch.tensor(1 / 3, dtype=torch.float64, device=device)
    with use_backend(backend):
        fastdyn.ops.multi_tensor_unscale_norm_(ts, inv, torch.zeros((), device=device))
    for a, b in zip(ts, expected):
        assert_close(a, b, dtype, scale=0.5)  # one rounding of the product


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_an_infinite_inverse_scale_gives_inf_not_nan(backend, device):
    """A loss scale underflowed to 0 makes the inverse inf: the unscaled gradients and their
    norms are inf, as torch's. Triton's masked tail lanes (loaded as 0) gave 0 * inf = NaN,
    which the sums took; the update kernels' statistics had the same flaw."""
    ts = [torch.ones(3, device=device), torch.full((5,), -2.0, device=device)]
    found = torch.zeros((), device=device)
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_unscale_norm_(
            ts, torch.tensor(math.inf, device=device), found, 2.0, per_tensor=True)
    assert total.item() == math.inf and per.tolist() == [math.inf, math.inf]
    assert found.item() == 0.0  # (the gradients given were finite, as torch judges them)
    p = [torch.ones(3, device=device)]
    stats = torch.zeros(1, 4, device=device)
    with use_backend(backend):
        fastdyn.ops.adam_(p, [torch.ones(3, device=device)], [torch.zeros(3, device=device)],
                          [torch.zeros(3, device=device)], [], [], [torch.zeros((), device=device)],
                          torch.tensor(0.1, device=device), 0.9, 0.999, 0.0, 1e-8, False, False,
                          True, grad_scale=torch.zeros((), device=device), stats=stats)
    assert stats[0, 0].item() == math.inf
