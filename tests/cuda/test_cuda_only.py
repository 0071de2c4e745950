"""What only a GPU can show: no host syncs in a step, CUDA-graph capture and replay of a full
step, 64-bit indexing past 2^31 elements (norms, updates, clipping), thousands of tiny tensors
in one launch."""

import fcntl
import tempfile
from pathlib import Path

import pytest
import torch

import fastdyn
from fastdyn.ops import use_backend
from helpers import BUILT_CUDA, HAS_CUDA
from optim.models import mlp, mlp_loss, regression_data

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible)")]

BACKENDS = [pytest.param("native", marks=pytest.mark.skipif(not BUILT_CUDA, reason="CUDA kernels not built")),
            pytest.param("triton", marks=pytest.mark.triton)]
OPTS = {
    "Adam": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2),
    "SGD": dict(lr=0.05, momentum=0.9),
    "LAMB": dict(lr=1e-2, max_grad_norm=1.0),
    "LARS": dict(lr=0.5, weight_decay=1e-3),
    # under a scaler, whether the buffers' first step is still ahead is decided on the device
    "SGD-dampening": dict(lr=0.05, momentum=0.9, dampening=0.5),
}


def _setup(name):
    model = mlp().cuda()
    opt = getattr(fastdyn.optim, name.split("-")[0])(
        model.parameters(), **{**OPTS[name], "lr": torch.tensor(OPTS[name]["lr"], device="cuda")})
    x, y = (t.cuda() for t in regression_data())
    return model, opt, (x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTS))
def test_step_never_syncs(backend, name):
    model, opt, data = _setup(name)
    scaler = fastdyn.amp.LossScaler("cuda")
    with use_backend(backend):
        for i in range(3):
            opt.zero_grad()
            scaler.scale(mlp_loss(model, data)).backward()
            if i:  # the first step allocates state and builds launch tables
                torch.cuda.set_sync_debug_mode("error")
            try:
                scaler.step(opt)
                scaler.update()
                fastdyn.clip_grad_norm_(model.parameters(), 1.0)
            finally:
                torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTS))
def test_cuda_graph_capture_and_replay(backend, name):
    model, opt, data = _setup(name)
    twin, twin_opt, _ = _setup(name)
    twin.load_state_dict(model.state_dict())
    static_x, static_y = data
    with use_backend(backend):
        # warm up on a side stream (state, tables), as torch's capture recipe does
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                for m, o in ((model, opt), (twin, twin_opt)):
                    o.zero_grad(set_to_none=False)
                    mlp_loss(m, (static_x, static_y)).backward()
                    o.step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        # None, not zeros: the captured backward then writes fresh grads on each replay
        # instead of adding to the last ones (torch's whole-network capture recipe; seen on
        # an H100: with zeros every replayed step used the sum of all gradients so far)
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            mlp_loss(model, (static_x, static_y)).backward()
            opt.step()
        for _ in range(3):
            graph.replay()
            twin_opt.zero_grad(set_to_none=False)
            mlp_loss(twin, (static_x, static_y)).backward()
            twin_opt.step()
        torch.cuda.synchronize()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ord", [2.0, float("inf")])
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "fp32+bf16"])
def test_clip_captured_on_tensors_it_never_saw(backend, ord, mixed):
    """The launch tables of tensors first seen while capturing are built into the graph (the
    Triton backend copies them from pinned memory at each replay, and so the order that puts
    mixed dtypes' norms back in list order); kernels compiled on other tensors before. A
    replay clips the grads written into the captured tensors."""
    dtypes = [torch.float32, torch.bfloat16 if mixed else torch.float32, torch.float32]
    warm = [torch.randn(n, device="cuda", dtype=d) for n, d in zip((7, 300, 2), dtypes)]
    with use_backend(backend):
        fastdyn.ops.clip_grads_(warm, 1.0, ord)
        grads = [torch.zeros(n, device="cuda", dtype=d) for n, d in zip((5, 70_000, 1), dtypes)]
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            total = fastdyn.ops.clip_grads_(grads, 0.5, ord)
        for seed in range(3):
            g = torch.Generator(device="cuda").manual_seed(seed)
            values = [torch.randn(t.shape, generator=g, device="cuda").to(t.dtype) for t in grads]
            for t, v in zip(grads, values):
                t.copy_(v)
            graph.replay()
            want = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(v.float(), ord) for v in values]), ord)
            torch.testing.assert_close(total, want, rtol=1e-5, atol=0)
            coef = torch.clamp(0.5 / (want + 1e-6), max=1.0)
            for t, v in zip(grads, values):
                # (bf16: the clipped value rounded once more, half an ulp: 2^-9 relative)
                tol = dict(rtol=1e-6, atol=1e-7) if t.dtype == torch.float32 else dict(rtol=4e-3, atol=0)
                torch.testing.assert_close(t.float(), (v.float() * coef).to(t.dtype).float(), **tol)


@pytest.fixture
def gpu_memory_to_itself():
    """The tests past 2^31 elements take 5-20 GB each: under pytest-xdist (gpu_check.sh runs
    12 workers on one GPU) they take turns, so that free memory checked is memory they get."""
    with open(Path(tempfile.gettempdir()) / "fastdyn-big-gpu-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            torch.cuda.empty_cache()
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_past_2_pow_31_elements(backend, gpu_memory_to_itself):
    n = 2 ** 31 + 12345
    free, _ = torch.cuda.mem_get_info()
    if free < n * 2 * 1.2:
        pytest.skip("not enough GPU memory")
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    x[-1] = 3.0  # an element past 2^31 must be seen
    with use_backend(backend):
        total, _ = fastdyn.multi_tensor_l2norm([x])
        inf_total, _ = fastdyn.ops.multi_tensor_norm([x], float("inf"))
    expected = (n - 1 + 9) ** 0.5
    assert abs(total.item() - expected) <= 1e-5 * expected
    assert inf_total.item() == 3.0
    del x


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_thousand_tiny_tensors(backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    ts = [torch.randn(1 + i % 7, device="cuda", generator=g) for i in range(10_000)]
    with use_backend(backend):
        total, per = fastdyn.multi_tensor_l2norm(ts, per_tensor=True)
        again = fastdyn.multi_tensor_l2norm(ts, per_tensor=True)
    ref = torch.stack([t.double().norm() for t in ts])
    torch.testing.assert_close(per.double(), ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(total.double(), ref.norm(), rtol=2e-6, atol=0)
    assert torch.equal(total, again[0]) and torch.equal(per, again[1])
    params = [torch.nn.Parameter(t.clone()) for t in ts]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = fastdyn.optim.LAMB(params, lr=1e-2)
    with use_backend(backend):
        opt.step()
    assert all(torch.isfinite(p).all() for p in params[:50])


UPDATES_PAST_2_POW_31 = {
    "SGD": dict(lr=0.25, momentum=0.9),
    "AdamW": dict(lr=0.125),
    "LAMB": dict(lr=0.125, weight_decay=0.0),  # r = 1: each element's update is its own
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(UPDATES_PAST_2_POW_31))
def test_update_past_2_pow_31_elements(backend, name, gpu_memory_to_itself):
    """Each element past 2^31 moves exactly as the same element of a small tensor does (the
    same kernel on the same values), and clipping scales it: an index truncated to 32 bits
    would leave the tail untouched or move the wrong elements."""
    n = 2 ** 31 + 12345
    free, _ = torch.cuda.mem_get_info()
    if free < n * 2 * 4 * 1.2:  # p, g and up to two state tensors, fp16
        pytest.skip("not enough GPU memory")

    def run(size):
        p = torch.nn.Parameter(torch.ones(size, dtype=torch.float16, device="cuda"))
        p.grad = torch.ones_like(p)
        p.grad[-1] = 2.0
        opt = getattr(fastdyn.optim, name)([p], **UPDATES_PAST_2_POW_31[name])
        with use_backend(backend):
            for _ in range(2):
                opt.step()
            total = fastdyn.clip_grad_norm_([p], 1000.0)  # ||g|| = 46341: clips to 2.2%
        return p.detach(), p.grad, total

    small_p, _, _ = run(8)
    assert small_p[0].item() != 1.0 and small_p[-1].item() != 1.0  # an untouched element fails
    big_p, big_g, total = run(n)
    for i in (0, 2 ** 31 - 1, 2 ** 31, n - 2):
        assert big_p[i].item() == small_p[0].item(), f"element {i}"
    assert big_p[-1].item() == small_p[-1].item()
    coef = min(1000.0 / (total.item() + 1e-6), 1.0)
    assert big_g[-1].item() == pytest.approx(2.0 * coef, rel=1e-3)  # fp16 rounding of g * coef
    assert big_g[2 ** 31].item() == pytest.approx(coef, rel=1e-3)
    del big_p, big_g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["LAMB", "AdamW", "SGD", "LARS"])
def test_16_bit_update_norms_at_scale(backend, name):
    """track_stats' ||update|| of bf16 params without master weights is the stored change
    (tests/ops/test_update_stats.py at scale): one tensor of 80M elements, so that blocks
    reduce several chunks each, and 800 small ones with empty ones among them, so that the
    launches split into batches (a launch of 4 lists, SGD's and LARS's, holds 656 tensors;
    more lists, fewer); a skipped step leaves the params as they were and reports NaN stats."""
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [80_000_000] + [0 if i % 50 == 0 else 1 + i % 300 for i in range(800)]
    params = [torch.nn.Parameter(torch.randn(n, device="cuda", generator=g).bfloat16()) for n in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=g).bfloat16()
    opts = {"LAMB": dict(lr=1e-2, weight_decay=0.01, max_grad_norm=1.0), "AdamW": dict(lr=1e-2),
            "SGD": dict(lr=1e-2, momentum=0.9), "LARS": dict(lr=1.0, weight_decay=1e-3)}[name]
    opt = getattr(fastdyn.optim, name)(params, **opts, track_stats=True)
    with use_backend(backend):
        before = [p.detach().double() for p in params]
        opt.step()
        change = torch.stack([(p.detach().double() - b).norm() for p, b in zip(params, before)])
        stats = opt.last_stats().values[:, 2].double()
        torch.testing.assert_close(stats, change, rtol=1e-4, atol=1e-6)
        assert change[0] > 0 and change[sizes.index(0)] == 0
        kept = [p.detach().clone() for p in params]
        scaler = fastdyn.amp.LossScaler("cuda", init_scale=2.0 ** 16)
        params[0].grad[7] = float("inf")
        scaler.scale(torch.zeros((), device="cuda", requires_grad=True))
        scaler.step(opt)
        assert all(torch.equal(p, k) for p, k in zip(params, kept))
        assert opt.last_stats().values.isnan().all()
