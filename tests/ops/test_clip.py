"""clip_grad_norm_: the fused op against the reference, and fastdyn.clip_grad_norm_ as a
drop-in for torch.nn.utils.clip_grad_norm_."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastdyn
from fastdyn import reference
from fastdyn.ops import use_backend
from helpers import BACKEND_DEVICES, DTYPES, NORM_RTOL, assert_close, rand_tensors


def params_with_grads(sizes, dtype, device, seed=0, scale=1.0):
    grads = rand_tensors(sizes, dtype, device, seed, scale)
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        ps.append(p)
    return ps


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=st.lists(st.sampled_from([1, 2, 7, 8193, 32769, 65537]), min_size=1, max_size=4),
       dtype=st.sampled_from(DTYPES), max_norm=st.sampled_from([1e-3, 1.0, 1e6]),
       ord=st.sampled_from([2.0, math.inf]))
def test_clip_op_matches_reference(backend, device, sizes, dtype, max_norm, ord):
    grads = rand_tensors(sizes, dtype, device, seed=11)
    ref = [g.clone() for g in grads]
    with use_backend(backend):
        total = fastdyn.ops.registry.for_device("clip_grad_norm_", grads[0].device)(grads, max_norm, ord)
    ref_total = reference.clip_grad_norm_(ref, max_norm, ord)
    torch.testing.assert_close(total.cpu(), ref_total.cpu(), rtol=NORM_RTOL, atol=0)
    for a, b in zip(grads, ref):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("max_norm", [0.01, 1.0, 1e9])
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0, 3.5, 0.0, -math.inf])
def test_dropin_matches_torch(backend, device, max_norm, norm_type):
    ours = params_with_grads([5, 1000, 40000], torch.float32, device, seed=2)
    theirs = params_with_grads([5, 1000, 40000], torch.float32, device, seed=2)
    with use_backend(backend):
        t1 = fastdyn.clip_grad_norm_(ours, max_norm, norm_type)
    t2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert t1.dtype == t2.dtype and t1.shape == t2.shape
    torch.testing.assert_close(t1, t2, rtol=1e-5, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_dropin_returns_grad_dtype_and_handles_edge_cases():
    ps = params_with_grads([10], torch.float16, "cpu")
    assert fastdyn.clip_grad_norm_(ps, 1.0).dtype == torch.float16
    # a single tensor, no grads, a generator
    p = params_with_grads([4], torch.float32, "cpu")[0]
    assert fastdyn.clip_grad_norm_(p, 1.0).shape == ()
    assert fastdyn.clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0).item() == 0.0
    with pytest.warns(UserWarning, match="empty generator") as warned:
        fastdyn.clip_grad_norm_((q for q in []), 1.0)
    assert warned[0].filename == __file__  # the caller's line, as torch's warning gives


def test_error_if_nonfinite_raises_before_clipping():
    ps = params_with_grads([10, 10], torch.float32, "cpu")
    ps[1].grad[3] = float("inf")
    before = [p.grad.clone() for p in ps]
    with pytest.raises(RuntimeError, match="non-finite"):
        fastdyn.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    for p, b in zip(ps, before):
        assert torch.equal(p.grad, b)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("ord", [2.0, math.inf])
def test_nan_norm_reaches_the_grads_like_torch(backend, device, ord):
    ours = params_with_grads([10, 10], torch.float32, device)
    theirs = params_with_grads([10, 10], torch.float32, device)
    for ps in (ours, theirs):
        ps[0].grad[0] = float("nan")
    with use_backend(backend):
        t1 = fastdyn.clip_grad_norm_(ours, 1.0, ord)
    t2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0, ord)
    assert t1.isnan() and t2.isnan()
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad.isnan(), b.grad.isnan())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("error_if_nonfinite", [False, True])
def test_sparse_grad_rejected(backend, device, error_if_nonfinite):
    ps = params_with_grads([3, 4], torch.float32, device)
    ps[1].grad = ps[1].grad.to_sparse()
    with use_backend(backend), pytest.raises(ValueError, match=r"parameters\[1\].grad is sparse"):
        fastdyn.clip_grad_norm_(ps, 1.0, error_if_nonfinite=error_if_nonfinite)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_dropin_compiles_fullgraph(backend, device):
    """The drop-in traces whole (no graph break) and computes what it does eagerly."""
    ours = params_with_grads([5, 1000, 8193], torch.float32, device, seed=4)
    eager = params_with_grads([5, 1000, 8193], torch.float32, device, seed=4)
    torch._dynamo.reset()
    with use_backend(backend):
        clip = torch.compile(lambda: fastdyn.clip_grad_norm_(ours, 0.5), fullgraph=True)
        total = clip()
        eager_total = fastdyn.clip_grad_norm_(eager, 0.5)
    torch.testing.assert_close(total, eager_total, rtol=0, atol=0)
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    assert total > 0.5  # the norm before clipping: the grads were clipped, not left alone


@pytest.mark.parametrize("case", ["float64", "norm_type=1", "mixed float64"])
def test_general_path_compiles_fullgraph(case):
    """float64 grads and norm types other than 2 and inf take the general path; its overlap
    check read data pointers, which dynamo cannot trace (torch's compiles whole)."""
    dtypes = {"float64": [torch.float64], "norm_type=1": [torch.float32],
              "mixed float64": [torch.float32, torch.float64]}[case]
    norm_type = 1.0 if case == "norm_type=1" else 2.0

    def make():
        return [p for i, dt in enumerate(dtypes) for p in params_with_grads([5, 9], dt, "cpu", seed=i)]

    ours, eager = make(), make()
    torch._dynamo.reset()
    clip = torch.compile(lambda: fastdyn.clip_grad_norm_(ours, 0.5, norm_type), fullgraph=True)
    total, eager_total = clip(), fastdyn.clip_grad_norm_(eager, 0.5, norm_type)
    # (inductor's float64 norm may round its last bit differently from eager's)
    torch.testing.assert_close(total, eager_total, rtol=1e-15, atol=0)
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-15, atol=0)
    assert total > 0.5


def test_mixed_dtypes_one_call():
    ps = params_with_grads([100], torch.float32, "cpu") + params_with_grads([50], torch.bfloat16, "cpu", 1)
    truth = torch.cat([p.grad.double().flatten() for p in ps]).norm()
    ref = params_with_grads([100], torch.float32, "cpu") + params_with_grads([50], torch.bfloat16, "cpu", 1)
    t1 = fastdyn.clip_grad_norm_(ps, 0.5)
    # torch rounds the bfloat16 group's norm to bfloat16 before combining; fastdyn keeps fp32
    torch.testing.assert_close(t1.double(), truth, rtol=NORM_RTOL, atol=0)
    torch.testing.assert_close(t1, torch.nn.utils.clip_grad_norm_(ref, 0.5), rtol=8e-3, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("ord", [2.0, float("inf")])
def test_norm_of_negative_zeros_is_positive_zero(backend, device, ord):
    """torch's norm of -0.0 is +0.0; a sign carried through |x| would print as -0."""
    params = [torch.nn.Parameter(torch.zeros(n, device=device)) for n in (3, 17)]
    for p in params:
        p.grad = torch.full_like(p, -0.0)
    with use_backend(backend):
        total = fastdyn.clip_grad_norm_(params, 1.0, norm_type=ord)
    assert total.item() == 0.0 and not torch.signbit(total).item()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("values,max_norm,norm_type", [
    ([1e100, 1e100], 1.0, 2.0), ([1e100, -1e100], 1.0, 1.0), ([3.0, 4.0], 1e-60, 2.0),
    ([1e-200, 1e-200], 1.0, 2.0), ([1 + 1e-12, 2.0], 1.0, 2.0), ([1e300, 5.0], 1.0, math.inf)])
def test_float64_grads_clip_in_float64(backend, device, values, max_norm, norm_type):
    """float64 gradients keep float64's range and digits, as torch's clip does: a norm of
    1e100 is no inf, a max_norm of 1e-60 no 0."""
    def params():
        p = torch.nn.Parameter(torch.zeros(len(values), dtype=torch.float64, device=device))
        q = torch.nn.Parameter(torch.zeros(3, device=device))  # a float32 one beside it
        p.grad = torch.tensor(values, dtype=torch.float64, device=device)
        q.grad = torch.tensor([0.5, 0.0, -0.25], device=device)
        return [p, q]
    ours, theirs = params(), params()
    with use_backend(backend):
        t1 = fastdyn.clip_grad_norm_(ours, max_norm, norm_type)
    t2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert t1.dtype == t2.dtype == torch.float64
    torch.testing.assert_close(t1, t2, rtol=1e-14, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6 if a.dtype == torch.float32 else 1e-14,
                                   atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0])
def test_strided_grads_clip_like_torch(backend, device, norm_type):
    """Views with gaps (a slice with a step), which the kernels do not take, beside dense
    grads: measured and scaled with torch's ops, the rest fused, one total."""
    def params():
        g = torch.Generator().manual_seed(5)
        base = torch.randn(8, 12, generator=g).to(device)
        a = torch.nn.Parameter(torch.zeros(8, 6, device=device))
        b = torch.nn.Parameter(torch.zeros(300, device=device))
        a.grad = base[:, ::2]
        b.grad = torch.randn(300, generator=g).to(device)
        return [a, b], base
    (ours, base1), (theirs, base2) = params(), params()
    with use_backend(backend):
        t1 = fastdyn.clip_grad_norm_(ours, 0.5, norm_type)
    t2 = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
    torch.testing.assert_close(t1, t2, rtol=1e-5, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(base1[:, 1::2], base2[:, 1::2], rtol=0, atol=0)  # the gaps untouched


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("n", [7, 1023, 1024, 5000])
def test_float32_norm_past_float_range_is_inf_whatever_the_length(backend, device, n):
    """Squares of float32 values sum in float32 (as torch's norm): 1e20^2 overflows, in the
    vector blocks and in the tail alike."""
    p = torch.nn.Parameter(torch.zeros(n, device=device))
    p.grad = torch.full((n,), 1e20, device=device)
    with use_backend(backend):
        total = fastdyn.clip_grad_norm_([p], 1.0)
    assert torch.isinf(total).item()


@pytest.mark.parametrize("error_if_nonfinite", [False, True])
def test_shared_gradients_are_refused_naming_the_parameters(error_if_nonfinite):
    """Two parameters holding one gradient tensor would be scaled twice (torch's foreach
    does that); the error names them as the caller does, not by their place among the
    gradients present (parameter 0 has none). Both the fused and the general path."""
    ps = [torch.nn.Parameter(torch.randn(3)) for _ in range(3)]
    ps[1].grad = torch.randn(3)
    ps[2].grad = ps[1].grad
    before = ps[1].grad.clone()
    with pytest.raises(ValueError, match=r"parameters\[1\]\.grad and parameters\[2\]\.grad "
                                         r"share memory"):
        fastdyn.clip_grad_norm_(ps, 1e-3, error_if_nonfinite=error_if_nonfinite)
    assert torch.equal(ps[1].grad, before)


def _grads_of_three_kinds(seed):
    """A dense float32 grad (the kernels), a float64 one and a sliced one (torch's ops)."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.zeros(n, dtype=dt)) for n, dt in
          ((50, torch.float32), (7, torch.float64), (6, torch.float32))]
    ps[0].grad = torch.randn(50, generator=g)
    ps[1].grad = torch.randn(7, generator=g, dtype=torch.float64)
    ps[2].grad = torch.randn(12, generator=g)[::2]
    return ps


@pytest.mark.parametrize("norm_type", [0.0, 1.0, 2.0, math.inf])
def test_grads_the_kernels_and_torch_measure_add_up_like_torch(norm_type):
    """The 0-"norm" counts tensors holding a nonzero; a float64 or sliced grad's part used
    to count its elements instead (total 7 where torch gives 3)."""
    ours, theirs = _grads_of_three_kinds(1), _grads_of_three_kinds(1)
    ours[1].grad.zero_()
    theirs[1].grad.zero_()
    t1 = fastdyn.clip_grad_norm_(ours, 0.5, norm_type)
    t2 = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
    torch.testing.assert_close(t1, t2, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_error_if_nonfinite_judges_the_norm_in_the_grads_dtype():
    """Two finite float16 grads of 60000: torch's float16 norm (84853) overflows and
    error_if_nonfinite raises. So does fastdyn, whose float32 norm is finite but would be
    returned as a float16 inf; nothing is scaled."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    for clip in (torch.nn.utils.clip_grad_norm_, fastdyn.clip_grad_norm_):
        p.grad = torch.full((2,), 60000.0, dtype=torch.float16)
        with pytest.raises(RuntimeError, match="non-finite"):
            clip([p], 1.0, error_if_nonfinite=True)
        assert torch.equal(p.grad, torch.full((2,), 60000.0, dtype=torch.float16))


def test_a_gradient_that_cannot_be_written_is_refused_before_any_is_scaled():
    """An expanded grad (stride 0) cannot be scaled in place: torch raises when it reaches
    it, after scaling those before it; fastdyn raises before scaling any."""
    dense = torch.nn.Parameter(torch.zeros(4))
    dense.grad = torch.full((4,), 2.0)
    expanded = torch.nn.Parameter(torch.zeros(4))
    expanded.grad = torch.ones(1).expand(4)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        fastdyn.clip_grad_norm_([dense, expanded], 0.1)
    assert torch.equal(dense.grad, torch.full((4,), 2.0))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ord", [2.0, math.inf])
def test_clip_coefficient_counts_the_1e6_of_torchs_rule(backend, device, dtype, ord):
    """Gradients of ~1e-7 (total norm ~1e-6) and max_norm 1e-7: torch's coefficient
    max_norm / (total + 1e-6) is about a third of max_norm / total, so the 1e-6 decides the
    result. The fused op and the reference against each other and against torch."""
    sizes = [3, 50, 8193]
    # elements of ~1e-8: a 2-norm of ~1e-8 sqrt(8246) ~ 1e-6; the inf-norm is the largest
    # element, ~4 sigma
    scale = 1e-8 if ord == 2.0 else 2.5e-7
    max_norm = 1e-7
    grads = rand_tensors(sizes, dtype, device, seed=3, scale=scale)
    ref = [g.clone() for g in grads]
    theirs = params_with_grads(sizes, dtype, device, seed=3, scale=scale)
    with use_backend(backend):
        total = fastdyn.ops.registry.for_device("clip_grad_norm_", grads[0].device)(grads, max_norm, ord)
    ref_total = reference.clip_grad_norm_(ref, max_norm, ord)
    torch_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, ord)
    t = torch_total.item()
    assert 3e-7 < t < 3e-6, t  # the 1e-6 is a third or more of the denominator
    torch.testing.assert_close(total.double().cpu(), torch_total.double().cpu(), rtol=NORM_RTOL, atol=0)
    torch.testing.assert_close(ref_total.double().cpu(), torch_total.double().cpu(), rtol=NORM_RTOL, atol=0)
    # relative only: STORE_TOL's atol (1e-6 for float32) is above these gradients; the
    # coefficient carries the norm's relative error
    for a, b, p in zip(grads, ref, theirs):
        for ours in (a, b):
            torch.testing.assert_close(ours.double().cpu(), p.grad.double().cpu(), rtol=NORM_RTOL,
                                       atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("error_if_nonfinite", [False, True])
def test_inf_norm_counts_empty_grads_as_zero(backend, device, error_if_nonfinite):
    """torch raises on an empty gradient's inf norm (a max over no elements); fastdyn takes
    0, the max's identity for norms: only empty grads give 0, and beside others they change
    nothing (the norm and clipping are those of the others alone)."""
    empty = params_with_grads([0, 0], torch.float32, device)
    with use_backend(backend):
        total = fastdyn.clip_grad_norm_(empty, 1.0, math.inf, error_if_nonfinite)
    assert total.item() == 0.0 and total.dtype == torch.float32
    ours = params_with_grads([0, 5, 0, 3], torch.float32, device, scale=4.0)
    theirs = params_with_grads([5, 3], torch.float32, device, scale=4.0)
    for i, p in enumerate(theirs):  # the same values as ours' non-empty grads
        p.grad.copy_(ours[2 * i + 1].grad)
    with use_backend(backend):
        total = fastdyn.clip_grad_norm_(ours, 1.0, math.inf, error_if_nonfinite)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, math.inf)
    assert expected.item() > 1.0  # it clips
    torch.testing.assert_close(total, expected, rtol=0, atol=0)
    for p, q in zip([ours[1], ours[3]], theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("norm_type", [-math.inf, -1.0, -2.0])
def test_negative_orders_ignore_empty_grads(backend, device, norm_type):
    """Beside other gradients an empty one changes nothing for a norm of negative order, as
    for the inf norm above: its norm had been taken as 0, which makes a min or a sum of
    |x|^p with p < 0 total 0 (no clipping at all). torch's clip of the others alone is the
    answer (torch refuses the empty one)."""
    ours = params_with_grads([5, 0, 3], torch.float32, device, scale=4.0)
    theirs = params_with_grads([5, 3], torch.float32, device, scale=4.0)
    for p, q in zip(theirs, (ours[0], ours[2])):
        p.grad.copy_(q.grad)
    with use_backend(backend):
        total = fastdyn.clip_grad_norm_(ours, 0.05, norm_type)
        per = fastdyn.ops.multi_tensor_norm([p.grad for p in ours], norm_type, per_tensor=True)[1]
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.05, norm_type)
    assert expected.item() > 0.05  # it clips
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    assert per[1].item() == math.inf
    for p, q in zip((ours[0], ours[2]), theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
