"""sgd_ against the float64 reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES
from ops.update_harness import assert_groups_close, hyper, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def sgd_args(momentum, dampening, wd, nesterov, maximize, first, lr=0.1, **kw):
    def build(g):
        return ((g["params"], g["grads"], g["state0"] if momentum else [], g["master_params"],
                 torch.tensor(lr, device=g["params"][0].device), hyper(momentum, g["params"][0].device),
                 dampening, hyper(wd, g["params"][0].device), nesterov,
                 maximize, first), kw)
    return build


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), momentum=st.sampled_from([0.0, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), wd=st.sampled_from([0.0, 1e-2]),
       nesterov=st.booleans(), maximize=st.booleans(), first=st.booleans(), master=st.booleans())
def test_sgd_matches_reference(backend, device, sizes, dtype, momentum, dampening, wd, nesterov,
                               maximize, first, master):
    nesterov = nesterov and momentum > 0 and dampening == 0
    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=1, master=master, steps=False)
    ours, ref = run_both("sgd_", backend, device,
                         sgd_args(momentum, dampening, wd, nesterov, maximize, first), group)
    assert_groups_close(ours, ref, dtype, orig=group)
