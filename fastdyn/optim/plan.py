"""The plan of a step: the buckets of parameters that one fused op updates together, with
their state lists, and the gradients laid out as the kernels walk them. FusedOptimizer
builds a plan once and reuses it while the parameters with gradients and their state stay
the same objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

import fastdyn.ops as ops
from fastdyn import distributed


@dataclass
class Bucket:
    """Parameters of one param group on one device with one dtype (and, for DTensors, one
    sharding), and their state lists. The lists hold what the kernels see: the local
    shards of DTensor parameters and state."""

    group: dict
    device: torch.device
    dtype: torch.dtype
    params: list = field(default_factory=list)
    owners: list = field(default_factory=list)  # the parameters themselves (DTensors stay DTensors)
    spec: Optional[distributed.ShardSpec] = None  # where the other shards are, if sharded
    dtensor: bool = False  # gradients are DTensors: the kernels get their local shards
    state: dict = field(default_factory=dict)  # state key -> list of tensors
    steps: list = field(default_factory=list)
    master_params: list = field(default_factory=list)
    first_step: bool = False  # buffers created this step (SGD/LARS with dampening)
    group_index: int = 0
    indices: list = field(default_factory=list)  # positions of params in group["params"]
    names: list = field(default_factory=list)  # their torch "param_names", if the group has them
    # each param's state dict when the plan was built (None: no state), which a compiled
    # step's check reads (see _plan_holds_current_objects)
    state_dicts: list = field(default_factory=list)
    # Buffers created at a step that found_inf may have skipped: 0-dim, 0 until a step of
    # theirs ran (the device knows, the host does not), and the bucket to run once it has.
    started: Optional[torch.Tensor] = None
    later: Optional["Bucket"] = None
    # C++ references to the state lists (fastdyn._extension.hold), for eager steps; never to
    # the params, which torch.utils.swap_tensors (module.to() on tensor subclasses) must swap
    held_state: Any = None

    def once_started(self) -> "Bucket":
        """The same lists with the first step behind them (field by field: torch 2.6's dynamo
        cannot trace dataclasses.replace)."""
        return Bucket(self.group, self.device, self.dtype, params=self.params, owners=self.owners,
                      spec=self.spec, dtensor=self.dtensor, state=self.state, steps=self.steps,
                      master_params=self.master_params, first_step=False,
                      group_index=self.group_index, indices=self.indices, names=self.names,
                      state_dicts=self.state_dicts)

    def with_fresh_locals(self, state_of) -> "Bucket":
        """The same bucket with the local shards of its DTensor params and state taken from
        the DTensors again. For a compiled step: a plan built while dynamo traced holds the
        traced locals, which the aot_eager backend handed back as copies, and FSDP2's params
        stopped moving after the first compiled step (the copies moved)."""
        local = distributed.local
        b = Bucket(self.group, self.device, self.dtype,
                   params=[local(p) for p in self.owners], owners=self.owners, spec=self.spec,
                   dtensor=self.dtensor,
                   state={k: [local(state_of[p][k]) for p in self.owners] for k in self.state},
                   steps=self.steps,
                   master_params=[local(state_of[p]["master_param"]) for p in self.owners]
                   if self.master_params else [],
                   first_step=self.first_step, group_index=self.group_index,
                   indices=self.indices, names=self.names, state_dicts=self.state_dicts,
                   started=self.started)
        if self.later is not None:
            b.later = b.once_started()
        return b


def grads_in_param_layout(grads: list, params: list) -> Optional[list]:
    """`grads` with those laid out unlike their param copied into the param's layout; None
    when all already are (the op refused something else)."""
    if all(map(ops.checks.same_layout, grads, params)):
        return None
    return [g if ops.checks.same_layout(g, p) else torch.empty_like(p).copy_(g)
            for g, p in zip(grads, params)]


def plan_grads_in_param_layout(plan: list, grads: list) -> Optional[list]:
    """grads_in_param_layout of every bucket (grads aligned with plan); None when all
    already are laid out like their params."""
    fixed = [grads_in_param_layout(bg, b.params) for b, bg in zip(plan, grads)]
    if all(f is None for f in fixed):
        return None
    return [bg if f is None else f for bg, f in zip(grads, fixed)]
