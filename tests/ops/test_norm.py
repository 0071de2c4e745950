"""multi_tensor_norm / multi_tensor_l2norm against the float64 reference."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastdyn
from fastdyn import reference
from fastdyn.ops import use_backend
from fastdyn.ops.backend import triton_available
from helpers import BACKEND_DEVICES, DTYPES, INTERPRETED, NORM_RTOL, cuda_only, rand_tensors

# 0, 1, primes, both sides of every backend's chunk size (CPU 32768, CUDA 65536, Triton 8192)
ODD_SIZES = [0, 1, 2, 3, 7, 31, 127, 8191, 8192, 8193, 32767, 32768, 32769, 65537]

sizes_st = st.lists(st.sampled_from(ODD_SIZES + [5, 13, 1009, 4099]), min_size=0, max_size=6)
dtype_st = st.sampled_from(DTYPES)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("ord", [2.0, math.inf])
@given(sizes=sizes_st, dtypes=st.lists(dtype_st, min_size=6, max_size=6), seed=st.integers(0, 99))
def test_norm_matches_reference(backend, device, ord, sizes, dtypes, seed):
    tensors = [rand_tensors([n], dt, device, seed + i)[0] for i, (n, dt) in enumerate(zip(sizes, dtypes))]
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm(tensors, ord, per_tensor=True)
    ref_total, ref_per = reference.multi_tensor_norm(tensors, ord, True) if tensors else (
        torch.zeros(()), torch.zeros(0))
    assert total.dtype == torch.float32 and per.dtype == torch.float32
    if tensors:
        assert total.device == tensors[0].device
    torch.testing.assert_close(total.cpu(), ref_total.cpu(), rtol=NORM_RTOL, atol=1e-30)
    torch.testing.assert_close(per.cpu(), ref_per.cpu(), rtol=NORM_RTOL, atol=1e-30)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_l2norm_contract(backend, device):
    ts = rand_tensors([3, 4], torch.float16, device)
    with use_backend(backend):
        total, per = fastdyn.multi_tensor_l2norm(ts)
        assert per is None
        total2, per2 = fastdyn.multi_tensor_l2norm(ts, per_tensor=True)
    assert per2.shape == (2,) and per2.dtype == torch.float32
    assert torch.equal(total, total2)
    expected = torch.cat([t.double().flatten() for t in ts]).norm()
    torch.testing.assert_close(total.double().cpu(), expected.cpu(), rtol=NORM_RTOL, atol=0)


def test_empty_list():
    total, per = fastdyn.multi_tensor_l2norm([], per_tensor=True)
    assert total.item() == 0.0 and per.shape == (0,)


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_triton_ops_of_an_empty_list_are_the_reference_s():
    """Called directly, the Triton norm and clip of no tensors had raised IndexError (the
    native ops, which need a tensor to dispatch on, raise the dispatcher's error)."""
    import fastdyn.ops.triton  # noqa: F401

    total, per = torch.ops.fastdyn_triton.multi_tensor_norm([], 2.0, True)
    assert torch.equal(total, reference.multi_tensor_norm([], 2.0, True)[0]) and per.shape == (0,)
    assert torch.equal(torch.ops.fastdyn_triton.clip_grad_norm_([], 1.0, 2.0),
                       reference.clip_grad_norm_([], 1.0))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_many_tiny_tensors(backend, device):
    n = 3000 if backend == "native" else 300
    ts = rand_tensors([1 + i % 5 for i in range(n)], torch.float32, device, seed=3)
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm(ts, 2.0, True)
    ref_total, ref_per = reference.multi_tensor_norm(ts, 2.0, True)
    torch.testing.assert_close(per.cpu(), ref_per.cpu(), rtol=NORM_RTOL, atol=0)
    torch.testing.assert_close(total.cpu(), ref_total.cpu(), rtol=NORM_RTOL, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_one_large_tensor(backend, device):
    n = 3_000_017 if backend == "native" else 100_003
    t = rand_tensors([n], torch.float32, device, seed=4)
    with use_backend(backend):
        total, _ = fastdyn.multi_tensor_l2norm(t)
    torch.testing.assert_close(total.double().cpu(), t[0].double().norm().cpu(), rtol=NORM_RTOL, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("ord", [2.0, math.inf])
def test_a_nan_in_the_first_chunk_of_a_long_tensor_propagates(backend, device, ord):
    """The per-tensor combination of the chunks' partials goes through 128 of them at a time
    (Triton): a max that keeps NaN only from the last 128 lost one from chunk 0 (the inf
    norm of this tensor came out 1.0). 129 chunks and a few elements, per backend's chunk."""
    chunk = 8192 if backend == "triton" else 65536
    x = torch.ones(129 * chunk + 5, device=device)
    x[3] = float("nan")
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm([x, torch.ones(7, device=device)], ord,
                                                   per_tensor=True)
    assert total.isnan() and per[0].isnan()
    assert per[1].item() == pytest.approx(7 ** 0.5 if ord == 2 else 1.0, rel=1e-6)


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


@pytest.mark.slow
def test_cpu_kernels_past_2_pow_31_elements():
    """The CPU kernels index with 64 bits: an fp16 tensor of 2^31 + 12345 elements (4.3 GB)
    whose last element alone differs is measured (L2, inf), unscaled and clipped whole. An
    index truncated to 32 bits would miss or wrap to the elements past 2^31. (The CUDA
    kernels' twins are in tests/cuda; the Triton interpreter would take hours.)"""
    n = 2 ** 31 + 12345
    if not hasattr(torch.ops.fastdyn, "clip_grad_norm_") or _available_bytes() < n * 2 * 1.5:
        pytest.skip("needs the native CPU kernels and ~6.5 GB of free memory")
    x = torch.ones(n, dtype=torch.float16)
    x[-1] = 3.0
    with use_backend("native"):
        total, _ = fastdyn.multi_tensor_l2norm([x])
        inf_total, _ = fastdyn.ops.multi_tensor_norm([x], math.inf)
        found_inf = torch.zeros(())
        unscaled, _ = fastdyn.ops.multi_tensor_unscale_norm_([x], torch.tensor(0.5), found_inf)
        clipped = fastdyn.ops.norm.clip_grads_([x], 1000.0)
    expected = math.sqrt(n - 1 + 9)  # 46341.1: in float32 to ~3e-8 of it
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert inf_total.item() == 3.0 and found_inf.item() == 0.0
    assert unscaled.item() == pytest.approx(expected / 2, rel=1e-6)
    assert clipped.item() == pytest.approx(expected / 2, rel=1e-6)
    coef = 1000.0 / (clipped.item() + 1e-6)  # x was 0.5 everywhere (1.5 at the end) before it
    for i in (0, 2 ** 31 - 1, 2 ** 31, n - 2):
        assert x[i].item() == pytest.approx(0.5 * coef, rel=1e-3), f"element {i}"  # fp16 rounding
    assert x[-1].item() == pytest.approx(1.5 * coef, rel=1e-3)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("ord", [2.0, math.inf])
def test_nonfinite_propagates(backend, device, bad, ord):
    ts = rand_tensors([100, 40000], torch.float32, device)
    ts[1][12345] = bad
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm(ts, ord, True)
    assert not torch.isfinite(total).item()
    assert torch.isfinite(per[0]).item() and not torch.isfinite(per[1]).item()
    if bad != bad:
        assert total.isnan().item()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_deterministic_bits(backend, device):
    ts = rand_tensors([70001, 3, 40000, 1], torch.float32, device, seed=9)
    with use_backend(backend):
        first = fastdyn.ops.multi_tensor_norm(ts, 2.0, True)
        for _ in range(3):
            again = fastdyn.ops.multi_tensor_norm(ts, 2.0, True)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_cpu_bits_do_not_depend_on_thread_count():
    ts = rand_tensors([200_003, 70_001, 5], torch.float32, "cpu", seed=5)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(fastdyn.ops.multi_tensor_norm(ts, 2.0, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_other_norm_types_use_the_reference():
    ts = rand_tensors([10, 20], torch.float32, "cpu")
    total, _ = fastdyn.ops.multi_tensor_norm(ts, 3.0)
    expected = torch.cat([t.flatten() for t in ts]).double().norm(3.0)
    torch.testing.assert_close(total.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_bad_inputs(backend, device):
    with use_backend(backend):
        with pytest.raises(TypeError, match=r"tensors\[1\] has dtype (Int|torch.int32)"):
            fastdyn.ops.multi_tensor_norm([torch.ones(2, device=device),
                                           torch.ones(2, dtype=torch.int32, device=device)])
        with pytest.raises(TypeError, match=r"tensors\[0\] has dtype (ComplexFloat|torch.complex64)"):
            fastdyn.ops.multi_tensor_norm([torch.ones(2, dtype=torch.complex64, device=device)])
        with pytest.raises(ValueError, match="sparse"):
            fastdyn.ops.multi_tensor_norm([torch.ones(2, device=device).to_sparse()])
        with pytest.raises(ValueError, match="not dense"):
            fastdyn.ops.multi_tensor_norm([torch.ones(4, 4, device=device)[:, :2]])
        # what the schema refuses (a RuntimeError there) is named by the checks
        with pytest.raises(TypeError, match=r"tensors\[1\] is a NoneType, not a tensor"):
            fastdyn.ops.multi_tensor_norm([torch.ones(2, device=device), None])
        with pytest.raises(TypeError, match="scale must be a tensor, got float"):
            fastdyn.ops.multi_tensor_scale_([torch.ones(2, device=device)], 0.5)
        with pytest.raises(TypeError, match="inv_scale must be a tensor, got float"):
            fastdyn.ops.multi_tensor_unscale_norm_([torch.ones(2, device=device)], 0.5,
                                                   torch.zeros((), device=device))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [2.0 ** 80, 2.0 ** 40, 3.0])
def test_norms_of_scaled_tensors_unscaled_by_inv_scale(backend, device, dtype, scale):
    """inv_scale gives the norms of the tensors times it, nothing written. At 2^80 the
    given values' squares (~1e46) pass float32's range; at 2^40, values of ~1e-24 times the
    scale: unscaled, their squares (~1e-48) are below it. Squared in float64, the norms are
    the reference's either way (the inf norm too); sizes across every backend's chunks."""
    sizes = [8193, 33, 1, 0]
    true = [t * (1e-24 if scale == 2.0 ** 40 else 0.1) for t in rand_tensors(sizes, torch.float64, device)]
    given = [(t * scale).to(dtype) for t in true]
    inv = torch.tensor(1.0 / scale, dtype=torch.float64, device=device)
    for ord in (2.0, math.inf):
        with use_backend(backend):
            before = [t.clone() for t in given]
            total, per = fastdyn.ops.multi_tensor_norm(given, ord, per_tensor=True, inv_scale=inv)
            assert all(torch.equal(a, b) for a, b in zip(given, before))
        ref_total, ref_per = reference.multi_tensor_norm(given, ord, True, inv)
        assert total.dtype == torch.float32 and total.device == given[0].device
        assert torch.isfinite(total) and float(total) > 0, (ord, total)
        torch.testing.assert_close(total.cpu(), ref_total.cpu(), rtol=NORM_RTOL, atol=0)
        torch.testing.assert_close(per.cpu(), ref_per.cpu(), rtol=NORM_RTOL, atol=0)
        # the reference is the plain float64 norm of the values times inv_scale
        plain = torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in given]) / scale, ord)
        torch.testing.assert_close(ref_total.double().cpu(), plain.cpu(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("ord", [2.0, math.inf])
def test_an_inf_inv_scale_gives_the_norms_of_the_tensors_times_inf(backend, device, ord):
    """A zero loss scale (inv_scale inf): a tensor of zeros times inf is NaN, and so is the
    total on every backend (the CPU kernels had scaled the combined sum: inf)."""
    ts = [torch.ones(3, device=device), torch.zeros(2, device=device)]
    inv = torch.tensor(math.inf, device=device)
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm(ts, ord, per_tensor=True, inv_scale=inv)
    ref_total, ref_per = reference.multi_tensor_norm(ts, ord, True, inv)
    assert math.isnan(float(total)) and math.isnan(float(ref_total))
    assert float(per[0]) == math.inf and math.isnan(float(per[1]))
    torch.testing.assert_close(per.cpu(), ref_per.cpu(), equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_inv_scale_of_a_norm_is_checked_and_names_the_device_of_an_empty_list(backend, device):
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm([], 2.0, True, inv_scale=torch.ones((), device=device))
        assert total.device.type == torch.device(device).type and float(total) == 0
        assert per.shape == (0,)
        x = [torch.ones(3, device=device)]
        for tensors in (x, []):
            with pytest.raises(ValueError, match="inv_scale must hold one value"):
                fastdyn.ops.multi_tensor_norm(tensors, inv_scale=torch.ones(2, device=device))
        with pytest.raises(TypeError, match="inv_scale must be float32 or float64"):
            fastdyn.ops.multi_tensor_norm(x, inv_scale=torch.ones((), dtype=torch.int64, device=device))
        if device != "cpu":
            with pytest.raises(ValueError, match="inv_scale is on cpu"):
                fastdyn.ops.multi_tensor_norm(x, inv_scale=torch.ones(()))


@cuda_only
def test_mismatched_devices_named():
    with pytest.raises(ValueError, match=r"tensors\[1\] is on cuda:0 but the other tensors are on cpu"):
        fastdyn.ops.multi_tensor_norm([torch.ones(2), torch.ones(2, device="cuda")])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("n", [16, 1000, 1024, 2047, 66536])
def test_a_norm_in_float_range_is_finite_whatever_the_length(backend, device, n):
    """Elements of 1e18: their squares fit float32, their sum does not, the norm does. The
    CPU kernel summed a chunk's tail (under 1,024 elements) in one float: inf at 1,000 and
    2,047 elements, 3.2e19 at 1,024."""
    with use_backend(backend):
        total, per = fastdyn.ops.multi_tensor_norm([torch.full((n,), 1e18, device=device)],
                                                   2.0, True)
    torch.testing.assert_close(total.cpu().double(), torch.tensor(math.sqrt(n) * 1e18,
                               dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(per.cpu().double()[0], total.cpu().double())


@pytest.mark.triton
@pytest.mark.skipif(not (triton_available() and INTERPRETED), reason="Triton under TRITON_INTERPRET=1")
def test_triton_tables_of_many_buckets_stay_cached():
    """An optimizer with 40 param groups uses 80 launch tables a step (update and step
    counters): all stay cached, none is rebuilt (and copied to the device) at the next step."""
    from fastdyn.ops.triton import _multi_tensor
    params = [torch.nn.Parameter(torch.randn(3 + i)) for i in range(40)]
    opt = fastdyn.optim.Adam([{"params": [p]} for p in params], lr=1e-3)
    grads = [torch.ones_like(p) for p in params]
    with use_backend("triton"):
        for step in range(3):
            for p, g in zip(params, grads):
                p.grad = g  # the same tensors every step: the same tables
            opt.step()
            if step == 1:
                cached = {id(t) for t in _multi_tensor._tables.values()}
    assert len(cached) >= 80
    assert cached <= {id(t) for t in _multi_tensor._tables.values()}


@pytest.mark.triton
@pytest.mark.skipif(not (triton_available() and INTERPRETED), reason="Triton under TRITON_INTERPRET=1")
def test_triton_tables_past_the_byte_budget_stay_cached(monkeypatch):
    """Tables larger than the byte budget (a step's past ~5B elements a device) all went at
    once, and every step rebuilt them: the budget grows to four of the largest, and past
    that the least recently used table still goes."""
    from collections import OrderedDict

    from fastdyn.ops.triton import _multi_tensor as mt
    monkeypatch.setattr(mt, "_tables", OrderedDict())
    monkeypatch.setattr(mt, "_table_bytes", 0)
    monkeypatch.setattr(mt, "_largest_table", 0)
    monkeypatch.setattr(mt, "_MAX_TABLE_BYTES", 200)  # under two of the tables below
    lists = [[torch.zeros(3 * mt.CHUNK)] for _ in range(5)]  # 3 rows + 2 begins: 112 bytes each
    first = [mt.chunk_table(ts, torch.device("cpu")) for ts in lists[:4]]
    again = [mt.chunk_table(ts, torch.device("cpu")) for ts in lists[:4]]
    assert all(a is b for a, b in zip(again, first))  # hits, none rebuilt
    mt.chunk_table(lists[4], torch.device("cpu"))  # a fifth: the least recently used goes
    kept = [id(t) for t in mt._tables.values()]
    assert len(kept) == 4 and id(first[0]) not in kept


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("op", ["norm", "unscale", "clip"])
def test_sum_of_squares_past_float32_range(backend, device, op):
    """65536 x 1e17: every square fits float32, their sum (6.6e38) does not. Chunks combined
    in float32 made the norm inf on CUDA and Triton (clip then zeroed the grads) where the
    CPU, combining in float64, gives 2.56e19."""
    ts = [torch.full((65536,), 1e17, device=device), torch.full((3,), 2.0, device=device)]
    expected = torch.linalg.vector_norm(torch.cat([t.double().cpu() for t in ts]))
    with use_backend(backend):
        if op == "norm":
            total, per = fastdyn.ops.multi_tensor_norm(ts, per_tensor=True)
        elif op == "unscale":
            ts = [t * 4 for t in ts]
            total, per = fastdyn.ops.multi_tensor_unscale_norm_(
                ts, torch.tensor(0.25, device=device), torch.zeros((), device=device), 2.0, True)
        else:
            total = fastdyn.ops.norm.clip_grads_(ts, 1.0, 2.0)
            per = None
    torch.testing.assert_close(total.double().cpu(), expected, rtol=NORM_RTOL, atol=0)
    if per is not None:
        torch.testing.assert_close(per.double().cpu(), torch.tensor([2.56e19, 12 ** 0.5],
                                   dtype=torch.float64), rtol=NORM_RTOL, atol=0)
    if op == "clip":  # scaled by 1 / 2.56e19, not zeroed
        torch.testing.assert_close(ts[0].double().cpu(), torch.full((65536,), 1e17 / 2.56e19,
                                   dtype=torch.float64), rtol=1e-5, atol=0)
