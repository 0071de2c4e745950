"""lars_ against the float64 reference of the contract."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import BACKEND_DEVICES, DTYPES
from ops.update_harness import assert_groups_close, make_group, run_both

SIZES = st.lists(st.sampled_from([0, 1, 3, 8193, 32769, 65537]), min_size=1, max_size=3)


def lars_args(momentum, dampening, wd, nesterov, trust_clip, always_adapt, first, lr=0.5, **kw):
    def build(g):
        return ((g["params"], g["grads"], g["state0"] if momentum else [], g["master_params"],
                 torch.tensor(lr, device=g["params"][0].device), momentum, dampening, wd, nesterov,
                 0.001, 1e-8, trust_clip, always_adapt, first), kw)
    return build


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), momentum=st.sampled_from([0.0, 0.9]),
       dampening=st.sampled_from([0.0, 0.1]), wd=st.sampled_from([0.0, 1e-4]),
       nesterov=st.booleans(), trust_clip=st.booleans(), always_adapt=st.booleans(),
       first=st.booleans(), master=st.booleans(), zero=st.sampled_from([None, "param", "grad"]))
def test_lars_matches_reference(backend, device, sizes, dtype, momentum, dampening, wd, nesterov,
                                trust_clip, always_adapt, first, master, zero):
    nesterov = nesterov and momentum > 0 and dampening == 0
    master = master and dtype != torch.float32
    group = make_group(sizes, dtype, device, buffers=1, master=master, steps=False,
                       zero_param_index=0 if zero == "param" else None,
                       zero_grad_index=0 if zero == "grad" else None)
    ours, ref = run_both("lars_", backend, device,
                         lars_args(momentum, dampening, wd, nesterov, trust_clip, always_adapt,
                                   first), group)
    assert_groups_close(ours, ref, dtype, orig=group)
