"""FusedOptimizer: what fastdyn's drop-in optimizers share.

A step groups the parameters that have gradients by (param group, device, dtype) and runs
one fused op per bucket (a few kernel launches whatever the number of tensors). The bucket
lists are cached as a plan and rebuilt only when the set of parameters with gradients or
the optimizer state changes, so the Python cost of a step does not grow with per-parameter
dictionary lookups.

Scalars that change between steps travel as tensors on the parameters' device: the learning
rate (a float lr is written into a cached device tensor), the step counters, and, under
`torch.amp.GradScaler` or `fastdyn.amp.LossScaler`, `grad_scale` and `found_inf`: the
kernels unscale the gradients as they read them and skip the whole step on the device when
found_inf is set. Nothing in a step waits for the device.

DTensor parameters (FSDP2's fully_shard, tensor parallelism) run the same kernels on each
rank's local shards (fastdyn.distributed); whatever sums over a whole tensor (the global
gradient norm, the statistics, LAMB's and LARS's trust ratios: fastdyn.optim.sharded) is
all-reduced over the ranks that hold its other shards.
"""

from __future__ import annotations

import copy
import re
from itertools import chain
from operator import is_
from typing import Any, Optional

import torch
from torch.optim import Optimizer

import fastdyn.ops as ops
from fastdyn import distributed
from fastdyn._extension import DataAddresses, dict_values_are, hold
from fastdyn.optim.plan import Bucket, grads_in_param_layout, plan_grads_in_param_layout
from fastdyn.optim.stats import StepStats

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_OLD_DYNAMO = torch.__version__ < "2.11"


def _moved(t: torch.Tensor, device: torch.device, dtype: Optional[torch.dtype] = None):
    """t on `device` (and in `dtype`): asynchronous, but into host memory. A device-to-host
    copy with non_blocking returns before the value lands, and the CPU kernels (and torch's
    CPU ops) read it at once: a CUDA lr for CPU params could be read before it arrived."""
    return t.to(device=device, dtype=dtype, non_blocking=device.type != "cpu")


def _like_param(t: torch.Tensor, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """State tensor t on p's device, in `dtype` and in p's memory layout (the kernels walk
    both with one index): t itself when it already is. A torch checkpoint loaded into a
    channels_last model holds contiguous state, which every step then refused."""
    if t.dtype != dtype or t.device != p.device:
        t = t.to(device=p.device, dtype=dtype)
    if not ops.checks.same_layout(t, p):
        t = torch.empty_like(p, dtype=dtype).copy_(t)
    return t


def _check_float(arg: str, value: Any, low: float = 0.0, high: Optional[float] = None,
                 low_inclusive: bool = True, high_inclusive: bool = False, torch_words: str = ""):
    """A hyperparameter in range; the error opens with torch's words for it, where it has
    some (code matching torch's messages keeps working), and names the argument."""
    v = float(value)
    ok_low = v >= low if low_inclusive else v > low
    ok_high = True if high is None else (v <= high if high_inclusive else v < high)
    if not (ok_low and ok_high) or v != v:
        lo = "[" if low_inclusive else "("
        hi = "" if high is None else (f", {high}]" if high_inclusive else f", {high})")
        raise ValueError(f"Invalid {torch_words or arg}: {value} ({arg} must be in "
                         f"{lo}{low}{hi or ', inf)'})")


def floats_of_betas(betas) -> tuple:
    """Tensor betas (torch's Adam takes them) read once, at construction or load, not at
    every step (a host sync a step on a GPU)."""
    return tuple(float(b) if isinstance(b, torch.Tensor) else b for b in betas)


class FusedOptimizer(Optimizer):
    """Base of the fastdyn optimizers. Subclasses set `_state_keys` and implement
    `_validate_group`, `_new_state` and `_run_bucket`."""

    # torch.amp.GradScaler hands grad_scale/found_inf to the step instead of unscaling.
    _step_supports_amp_scaling = True
    # fastdyn.amp.LossScaler sets _check_inf instead of checking the gradients itself: the
    # step checks them in its own pass (see _check_nonfinite)
    _folds_inf_check = True
    # per-parameter state tensors shaped like the parameter (besides "step")
    _state_keys: tuple = ()
    _has_step = True

    def __init__(self, params, defaults: dict, *, master_weights: bool = False,
                 track_stats: bool = False):
        self.master_weights = bool(master_weights)
        self.track_stats = bool(track_stats)
        self._reset_runtime()
        super().__init__(params, defaults)

    # ---------------------------------------------------------------- validation
    def add_param_group(self, param_group: dict) -> None:
        try:
            super().add_param_group(param_group)
        except ValueError as e:
            if "more than one parameter group" not in str(e):
                raise
            raise ValueError(f"{self._param_in_two_groups(param_group)}: {e}") from None
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
            for i, p in enumerate(group["params"]):
                if p.is_complex():
                    raise TypeError(f"params[{i}] is complex ({p.dtype}); {type(self).__name__} "
                                    "takes real floating-point parameters")
                if not p.is_floating_point():
                    raise TypeError(f"params[{i}] has dtype {p.dtype}; {type(self).__name__} takes "
                                    "floating-point parameters")
                if p.is_sparse:
                    raise ValueError(f"params[{i}] is sparse; {type(self).__name__} takes dense parameters")
                if not ops.checks._dense(p):
                    raise ValueError(f"params[{i}] is not dense (strides {p.stride()}); pass a "
                                     "contiguous parameter")
            # the fused step writes every param at once: one twice would lose an update
            ops.checks.check_no_shared_memory(written=[("params", group["params"])])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        self._invalidate()

    def _param_in_two_groups(self, param_group: dict) -> str:
        """Which param of a new group is already in which group (torch's message names
        neither)."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for gi, group in enumerate(self.param_groups):
            held = set(group["params"])
            for i, p in enumerate(params):
                if p in held:
                    return f"params[{i}] of the new param group is already in param group {gi}"
        return "a param of the new param group is already in another"

    def _validate_group(self, group: dict) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
            if not lr.is_floating_point():
                raise TypeError(f"Tensor lr must be floating point, got {lr.dtype}")
        else:
            _check_float("lr", lr, torch_words="learning rate")
        if isinstance(lr, torch.Tensor) and lr.device.type == "cpu":
            _check_float("lr", float(lr), torch_words="learning rate")

    # ---------------------------------------------------------------- state
    def _reset_runtime(self) -> None:
        # What a step leaves for the next one, in dicts: torch.compile (torch 2.11's dynamo)
        # traces item assignment into them but not setattr on the optimizer.
        self._runtime: dict = {"plan": None, "plan_key": None, "plan_state": None,
                               "plan_params": [], "plan_contents": None, "stats": None,
                               "grad_norm": None, "grad_norms": None, "clip": None,
                               "started": [], "cohort_of": {},
                               # id() of the params whose master weights came from a
                               # state dict (ids: dynamo traces them, guarding identity)
                               "loaded_masters": {}}
        self._scalar_tensors: dict = {}

    def _invalidate(self) -> None:
        self._runtime["plan"] = None
        self._runtime["plan_key"] = None

    def _state_dtype(self, p: torch.Tensor) -> torch.dtype:
        return torch.float32 if (self.master_weights and p.dtype in _LOW_PRECISION) else p.dtype

    def _ensure_state(self, p: torch.Tensor, group: dict) -> bool:
        """Creates or repairs the state of p (after a load, a new option); True if a
        momentum-like buffer was created (its first step)."""
        keys = self._required_keys(group)
        uses_master = self.master_weights and p.dtype in _LOW_PRECISION
        if not uses_master and "master_param" in self.state.get(p, {}):
            # (the param left 16 bits, or master weights are off): unused, it would go stale
            # and come back as the param's value when they are used again
            del self.state[p]["master_param"]
        if not keys and not self._has_step and not uses_master:
            return False  # nothing to hold (SGD without momentum): no empty entry, as torch
        state = self.state[p]
        sdtype = self._state_dtype(p)
        created = False
        for key in keys:
            t = state.get(key)
            if t is None:
                state[key] = self._new_state(key, p, sdtype)
                created = True
            else:
                fixed = _like_param(t, p, sdtype)
                if fixed is not t:  # (an assignment only where it changes something)
                    state[key] = fixed
        if self._has_step:
            step = state.get("step")
            if step is None:
                state["step"] = torch.zeros((), dtype=_scalar_dtype(), device=p.device)
            elif not isinstance(step, torch.Tensor):
                state["step"] = torch.tensor(float(step), dtype=_scalar_dtype(), device=p.device)
            elif step.device != p.device or not step.is_floating_point():
                state["step"] = step.to(device=p.device, dtype=torch.float32)
        if uses_master:
            master = state.get("master_param")
            if master is None:
                state["master_param"] = p.detach().to(torch.float32).clone(
                    memory_format=torch.preserve_format)
            else:
                fixed = _like_param(master, p, torch.float32)
                if fixed is not master:
                    state["master_param"] = fixed
                if id(p) in self._runtime["loaded_masters"]:
                    # a loaded master whose rounding is not the param's value is stale (the
                    # checkpoint's model trained on elsewhere, torch.optim carrying the key
                    # unchanged; weights loaded into the model after): the param's value
                    # wins there, the master's extra bits where they agree (no host sync)
                    fixed = state["master_param"]
                    fixed.copy_(torch.where(fixed.to(p.dtype) == p.detach(), fixed, p.detach().float()))
                    del self._runtime["loaded_masters"][id(p)]
        return created

    def _required_keys(self, group: dict) -> tuple:
        return self._state_keys

    def _new_state(self, key: str, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    # ---------------------------------------------------------------- plan
    def _plan_key(self, group_grads: list) -> tuple:
        """What a cached plan depends on besides object identities (_plan_objects): which
        params have grads, the state keys each group needs (momentum set nonzero, amsgrad
        turned on), the number of params with state (state cleared or deleted) and
        master_weights (set on a live optimizer: the eager step had kept its old plan)."""
        return (tuple(tuple([g is not None for g in gg]) for gg in group_grads),
                tuple(self._required_keys(g) for g in self.param_groups), len(self.state),
                self.master_weights)

    def _plan_objects_same(self) -> bool:
        if _OLD_DYNAMO and torch.compiler.is_compiling():
            # torch 2.6's dynamo cannot trace `is` between dicts: a step compiled there
            # does not see the state or a params list replaced (2.11 and later do)
            return True
        rt = self._runtime
        same = rt["plan_state"] is self.state and len(rt["plan_params"]) == len(self.param_groups) \
            and all(a is g["params"] for a, g in zip(rt["plan_params"], self.param_groups))
        if not same:
            return False
        if torch.compiler.is_compiling():
            # (objects first: dynamo sources a tensor from where the trace first reads it)
            return self._plan_holds_current_objects() and self._plan_fits_params()
        return self._plan_contents_same()

    def _plan_holds_current_objects(self) -> bool:
        """A compiled step's check of objects swapped in since the plan was built (a group
        dict, a param in a params list, a state tensor, a step counter): the graph
        reads its tensors through the plan, and dynamo's guards on the params and state
        (metadata, not identity) passed a swapped-in one, so the old kept stepping. `id()`
        of a traced tensor makes dynamo guard on its identity (`is` did not): a swap
        retraces, and the new trace builds a new plan. The eager check is
        _plan_contents_same. Its guards cost ~0.3 us a param at every compiled call (AdamW
        on 1,000 16-element params, CPU, backend="eager": 2.9 -> 3.2 ms; torch's compiled
        foreach AdamW there: 22 ms)."""
        groups, plan = self.param_groups, self._runtime["plan"]
        # every current object's id before any of the plan's tensors: dynamo guards the
        # source a tensor was first read from (read through the plan first, a swap passed).
        # The state tensors are read through the state dicts the plan holds: through
        # self.state (tensor keys) their guards cost 2.5 us a param, through the list 0.3.
        # A state dict cleared or an entry deleted fails the dict guards, as a swap the ids.
        # DTensor state: the plan holds local tensors, which a trace makes anew (params only)
        current = []
        for b in plan:
            if b.group_index >= len(groups) or groups[b.group_index] is not b.group:
                return False
            params = b.group["params"]
            masters = self.master_weights and b.dtype in _LOW_PRECISION
            keys = () if b.dtensor else (*b.state.keys(), *(("step",) if self._has_step else ()),
                                         *(("master_param",) if masters else ()))
            for i, j in enumerate(b.indices):
                if j >= len(params):
                    return False
                # (not `self.state.get(params[j]) is state`: any guard on self.state's values
                # cost 2.5 us a param, so a param's whole state dict replaced is not seen)
                state = b.state_dicts[i]
                if keys and (state is None or any(key not in state for key in keys)):
                    return False
                current.append([id(params[j]), *(id(state[key]) for key in keys)])
        held = []
        for b in plan:
            masters = self.master_weights and b.dtype in _LOW_PRECISION
            if len(b.master_params) != (len(b.owners) if masters else 0):
                return False
            for i, p in enumerate(b.owners):
                held.append([id(p)] if b.dtensor else [
                    id(p), *(id(ts[i]) for ts in b.state.values()),
                    *((id(b.steps[i]),) if self._has_step else ()),
                    *((id(b.master_params[i]),) if masters else ())])
        return current == held

    def _plan_fits_params(self) -> bool:
        """A compiled step's check of a param given new storage (`model.double()`,
        `model.to(memory_format=...)`): a dtype or layout that no longer matches its bucket's
        makes a new plan, and the new trace recasts the state. The eager check
        (_plan_contents_same) reads addresses, which a trace has none of; this one reads the
        metadata dynamo guards on anyway, so it costs nothing after the trace (a stale plan
        made the compiled step raise)."""
        for b in self._runtime["plan"]:
            for i, p in enumerate(b.owners):
                if p.dtype != b.dtype or p.device != b.device:
                    return False
                local = b.params[i]
                if any(not ops.checks.same_layout(ts[i], local) for ts in b.state.values()):
                    return False
                if b.master_params and not ops.checks.same_layout(b.master_params[i], local):
                    return False
            if self.master_weights and b.dtype in _LOW_PRECISION \
                    and len(b.master_params) != len(b.owners):
                return False
        return True

    def _plan_contents(self) -> tuple:
        """What a plan holds besides the lists it checks by identity: the group dicts, each
        params list's entries, the per-param state dicts and the tensors in them, and the
        local tensors of DTensor params and state (the plan hands the kernels those: a
        module op such as `model.double().float()` swaps in new ones, and the steps went to
        the old)."""
        dicts = tuple(self.state.values())
        plan = self._runtime["plan"]
        owners = [p for b in plan if b.dtensor for p in b.owners]
        sharded = [(t, t._local_tensor) for p in owners
                   for t in (p, *self.state.get(p, {}).values()) if distributed.is_dtensor(t)]
        # (wrapper subclasses have no memory of their own: identity only)
        plain = [p for b in plan if not b.dtensor for p in b.owners if ops.checks.has_own_memory(p)]
        return (tuple(self.param_groups), [tuple(g["params"]) for g in self.param_groups], dicts,
                list(chain.from_iterable(map(dict.values, dicts))), sharded,
                plain, DataAddresses(plain))

    def _plan_contents_same(self) -> bool:
        """An object swapped in since the plan was built (a group dict, a param in a params
        list, a state dict or a state tensor: offloaded and reloaded, reset) makes a new
        plan; the old one kept stepping the objects it held. C-level identity walks (the
        state values and data addresses in the extension, csrc/module.cpp): 55 us a step on
        1,000 params with Adam's three state entries (217 us in Python)."""
        if self._runtime["plan_contents"] is None:  # a plan built while compiling
            return False
        groups, params, dicts, values, sharded, plain, addresses = self._runtime["plan_contents"]
        if len(groups) != len(self.param_groups) or not all(map(is_, groups, self.param_groups)):
            return False
        if not all(len(a) == len(g["params"]) and all(map(is_, a, g["params"]))
                   for a, g in zip(params, self.param_groups)):
            return False
        if len(dicts) != len(self.state) or not all(map(is_, dicts, self.state.values())):
            return False
        # A param given new storage (`model.half()`, `.to(memory_format=...)`, `p.data = x`:
        # the same Parameter, new data) needs its state recast and its master weights made:
        # the new data is always at a new address, as the old was alive while it was made
        return dict_values_are(dicts, values) \
            and all(p._local_tensor is local for p, local in sharded) \
            and addresses.matches(plain)

    def _plan(self, group_grads: list, may_skip: bool) -> list:
        """Buckets of the params that have grads; `group_grads[i]` holds the grads of group i.
        may_skip: found_inf may skip this step on the device."""
        rt = self._runtime
        if rt["plan"] is not None and self._plan_key(group_grads) == rt["plan_key"] \
                and self._plan_objects_same():
            return rt["plan"]
        plan = self._build_plan(group_grads, may_skip)
        if any(b.first_step and b.started is None for b in plan):
            # Buckets whose buffers were created this step differ from the next step's: build
            # that one now (the state exists), so that a compiled step traces two plans, not
            # three (the second step would otherwise be a graph of its own).
            rt["plan"] = self._build_plan(group_grads, may_skip)
        else:
            rt["plan"] = plan
        # the key once the state exists: the next step finds this plan
        rt["plan_key"] = self._plan_key(group_grads)
        rt["plan_state"], rt["plan_params"] = self.state, [g["params"] for g in self.param_groups]
        # (a plan built while compiling has none: the next eager step builds its own rather
        # than check the objects against an older plan's contents and reuse this one)
        rt["plan_contents"] = None if torch.compiler.is_compiling() else self._plan_contents()
        return plan

    def _build_plan(self, group_grads: list, may_skip: bool) -> list:
        specs = self._check_plan_inputs(group_grads)  # (before anything changes)
        buckets: dict = {}
        local = distributed.local
        # param -> index into self._runtime["started"] (see Bucket.started)
        cohort_of = self._runtime["cohort_of"]
        if cohort_of:
            self._split_cohorts(group_grads)
        new_cohorts: dict = {}
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if group_grads[gi][i] is None:
                    continue
                created = self._ensure_state(p, group)
                dtensor = distributed.is_dtensor(p)
                spec = specs[(gi, i)]
                first = created and self._first_step_matters(group)
                cohort = cohort_of.get(p)
                if first and may_skip:
                    # a skipped step leaves these buffers before their first step: the
                    # params created together share one device flag
                    ckey = (gi, p.device, p.dtype, dtensor, spec)
                    cohort = new_cohorts.get(ckey)
                    if cohort is None:
                        cohort = new_cohorts[ckey] = len(self._runtime["started"])
                        self._runtime["started"].append(
                            torch.zeros((), dtype=torch.float32, device=p.device))
                    cohort_of[p] = cohort
                # the group's index, not id(group): torch 2.11's dynamo cannot trace id() of a dict
                bkey = (gi, p.device, p.dtype, first or cohort is not None, dtensor, spec, cohort)
                b = buckets.get(bkey)
                if b is None:
                    b = buckets[bkey] = Bucket(
                        group, p.device, p.dtype, first_step=bkey[3], group_index=gi, spec=spec,
                        dtensor=dtensor,
                        started=None if cohort is None else self._runtime["started"][cohort])
                state = self.state.get(p, {})
                b.params.append(local(p))
                b.owners.append(p)
                b.indices.append(i)
                if "param_names" in group:
                    b.names.append(group["param_names"][i])
                b.state_dicts.append(self.state.get(p))
                for k in self._required_keys(group):
                    b.state.setdefault(k, []).append(local(state[k]))
                if self._has_step:
                    b.steps.append(state["step"])
                if "master_param" in state and self.master_weights and p.dtype in _LOW_PRECISION:
                    b.master_params.append(local(state["master_param"]))
        for b in buckets.values():
            if b.started is not None:
                b.later = b.once_started()
            if not torch.compiler.is_compiling():
                b.held_state = hold([*chain.from_iterable(b.state.values()), *b.steps,
                                     *b.master_params])
        return list(buckets.values())

    def _check_plan_inputs(self, group_grads: list) -> dict:
        """Refuses what no step can take before any state is created or any param moves: a
        refused step leaves the optimizer as it was (a momentum buffer created by a step
        that then raised was taken for a started one: the next step's buf was
        (1 - dampening) * d, not d), and no bucket steps before a later one refuses its
        state. Returns the shard spec of each (group, index) with a grad."""
        specs = {}
        name = type(self).__name__
        for gi, group in enumerate(self.param_groups):
            keys = self._required_keys(group)
            for i, p in enumerate(group["params"]):
                grad = group_grads[gi][i]
                if grad is None:
                    continue
                where = f"params[{i}] of param group {gi}"
                if grad.is_sparse:
                    raise ValueError(f"{name} does not support sparse gradients ({where} has one)")
                # (autograd and the .grad setter keep these equal; a param's data replaced
                # after backward does not: refused here, before any bucket steps, not by
                # the update op of a later bucket after the earlier ones moved)
                if grad.shape != p.shape:
                    raise ValueError(f"the gradient of {where} has shape {list(grad.shape)}, but "
                                     f"the param has shape {list(p.shape)}")
                if grad.dtype != p.dtype:
                    raise TypeError(f"the gradient of {where} has dtype {grad.dtype}, but the "
                                    f"param has {p.dtype} (zero_grad() after converting params)")
                state = self.state.get(p, {})
                for key in (*keys, "master_param"):
                    t = state.get(key)
                    if isinstance(t, torch.Tensor) and t.shape != p.shape:
                        raise ValueError(f"state[{key!r}] of {where} has shape {list(t.shape)}, "
                                         f"but the param has shape {list(p.shape)} (a state "
                                         "dict of another model?)")
                specs[(gi, i)] = distributed.shard_spec(p, f"params[{i}]") \
                    if distributed.is_dtensor(p) else None
        if not torch.compiler.is_compiling():  # (a trace has no addresses)
            self._check_state_memory(specs)
        return specs

    def _check_state_memory(self, specs: dict) -> None:
        """What the steps write (params, their state) shares no memory, checked across all
        buckets before any steps: a loaded state dict holding one tensor twice (torch.save
        keeps such sharing) was refused by its bucket's op after the earlier buckets had
        stepped. One C++ check of all of them (~0.6 us a param with AdamW's state, most of it
        gathering the tensors); the error names the param as the caller knows it."""
        tensors, owners = [], []  # owners[k]: (state key or None for the param, group, index)
        params, state, local = self.param_groups, self.state, distributed.local
        for gi, i in specs:
            p = params[gi]["params"][i]
            for k, t in ((None, p), *state.get(p, {}).items()):
                t = local(t) if isinstance(t, torch.Tensor) else None
                # (tensors without memory to compare: FakeTensorMode's, meta)
                if ops.checks.has_own_memory(t) and not t.is_meta:
                    tensors.append(t)
                    owners.append((k, gi, i))
        try:
            torch.ops.fastdyn.check_written_memory(tensors)
        except (RuntimeError, ValueError) as e:
            def name(m):
                key, gi, i = owners[int(m[1])]
                return ("" if key is None else f"state[{key!r}] of ") + \
                    f"params[{i}] of param group {gi}"
            raise type(e)(re.sub(r"tensors\[(\d+)\]", name, str(e).split("\n")[0])) from None

    def _split_cohorts(self, group_grads: list) -> None:
        """Params of one `started` flag that miss the steps of this plan (no grad) must not
        see it set by those steps: they get a device copy of it as it is now."""
        present = {p for gi, group in enumerate(self.param_groups)
                   for p, g in zip(group["params"], group_grads[gi]) if g is not None}
        members: dict = {}
        for p, c in self._runtime["cohort_of"].items():
            members.setdefault(c, []).append(p)
        for c, ps in members.items():
            absent = [p for p in ps if p not in present]
            if absent and len(absent) < len(ps):
                started = self._runtime["started"]
                started.append(started[c].clone())
                for p in absent:
                    self._runtime["cohort_of"][p] = len(started) - 1

    def _first_step_matters(self, group: dict) -> bool:
        return False

    # ---------------------------------------------------------------- scalars
    def _lr_tensor(self, bucket: Bucket) -> torch.Tensor:
        return self._hyper_tensor(bucket, "lr", bucket.group["lr"])

    def _hyper_tensor(self, bucket: Bucket, name: str, value) -> torch.Tensor:
        """A value of the group that a scheduler may change every step (lr, the beta1 or
        momentum that OneCycleLR and CyclicLR cycle, weight_decay) as the one-element device
        tensor the ops read: a tensor as it is (on the bucket's device), a float in a float64
        tensor.
        float64: the kernels read it in their compute type, so float64 params keep every
        digit of a Python float (as torch's own optimizers do)."""
        device = bucket.device
        if isinstance(value, torch.Tensor):
            if value.dtype not in (torch.float32, torch.float64):  # (the ops'; torch takes 16 bits)
                return _moved(value, device, torch.float32)
            return _moved(value, device)  # (itself when already there)
        if torch.compiler.is_compiling():
            # a product, not a cached tensor written: the float is then a graph input (a
            # scheduler's value written with fill_ was a constant guarded on, a graph a step
            # until dynamo's recompile limit), and torch 2.11's AOT autograd lost the write
            # to the cache after such a recompile (the step ran on a stale lr)
            return torch.ones((), dtype=torch.float64, device=device) * value
        key = (bucket.group_index, device, name)
        cached = self._scalar_tensors.get(key)
        if cached is None:
            cached = self._scalar_tensors[key] = [
                torch.tensor(float(value), dtype=torch.float64, device=device), float(value)]
        elif cached[1] != value:
            cached[0].fill_(value)
            cached[1] = value
        return cached[0]

    @staticmethod
    def _on(t: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
        if t is None:
            return None
        return _moved(t, device)

    def _amp_scalars(self):
        """grad_scale and found_inf set by GradScaler (or LossScaler) for this step."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if not isinstance(found_inf, torch.Tensor):
            found_inf = None  # GradScaler passes 0 when no inf check was recorded
        if not isinstance(grad_scale, torch.Tensor):
            grad_scale = None if grad_scale is None or grad_scale == 1 else torch.tensor(float(grad_scale))
        return grad_scale, found_inf

    # ---------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # each .grad read once a step: a Parameter's .grad costs ~0.2 us, 1,000 params read
        # twice took 0.4 ms of a 1.6 ms step (measured, tiny tensors on the CPU)
        group_grads = [[p.grad for p in g["params"]] for g in self.param_groups]
        grad_scale, found_inf = self._amp_scalars()
        self._check_hypers()
        plan = self._plan(group_grads, may_skip=found_inf is not None)
        if torch.compiler.is_compiling():
            plan = [b.with_fresh_locals(self.state) if b.dtensor else b for b in plan]
        # (LossScaler: no gradient, no inf check.) len, not bool: dynamo of torch 2.11 (the
        # lent GPU machines') cannot trace bool(list), and every compiled step failed there
        self._runtime["had_grads"] = len(plan) > 0
        self._runtime["grad_norm"] = None  # set again if this step computes it
        self._runtime["stats"] = None  # (a step without grads showed the last one's)
        if not plan:
            return loss
        grads = []  # aligned with plan
        for b in plan:
            gg = group_grads[b.group_index]
            # a bucket with as many params as its group holds all of them, in order
            bg = gg if len(b.indices) == len(gg) else [gg[i] for i in b.indices]
            if b.dtensor:
                bg = [distributed.local(distributed.in_param_placements(g, p))
                      for g, p in zip(bg, b.owners)]
                # laid out like their params before any all-reduce: a retry after an op's
                # refusal would all-reduce again on the ranks whose shard it refused only
                bg = grads_in_param_layout(bg, b.params) or bg
            grads.append(bg)
        # Grads laid out unlike their param (hand-assigned; autograd's match) are copied into
        # its layout, as torch takes them. A compiled step checks at trace time (dynamo guards
        # strides: nothing at run time); an eager one only after an op refused them.
        if torch.compiler.is_compiling():
            grads = plan_grads_in_param_layout(plan, grads) or grads
            grad_scale = self._read_pass(plan, grads, grad_scale, found_inf)
        else:
            try:
                grad_scale = self._read_pass(plan, grads, grad_scale, found_inf)
            except ValueError:
                # the read pass writes nothing before all its ops have taken their grads
                fixed = plan_grads_in_param_layout(plan, grads)
                if fixed is None:
                    raise
                grads = fixed
                grad_scale = self._read_pass(plan, grads, grad_scale, found_inf)
        stats = []
        for b, bucket_grads in zip(plan, grads):
            st = None
            if self.track_stats:
                st = torch.full((len(b.params), 4), float("nan"), dtype=torch.float32, device=b.device)
                stats.append((b.owners, st))
            args = (b, bucket_grads, self._lr_tensor(b), self._on(grad_scale, b.device),
                    self._on(found_inf, b.device), st)
            if torch.compiler.is_compiling():
                self._run_bucket_step(*args)  # (grads laid out like their params above)
            else:
                try:
                    self._run_bucket_step(*args)
                except ValueError:
                    # the op refused before writing anything (an update with no read pass
                    # before it): grads in another layout are copied, as above
                    fixed = grads_in_param_layout(bucket_grads, b.params)
                    if fixed is None:
                        raise
                    self._run_bucket_step(b, fixed, *args[2:])
        if self.track_stats:
            clip = self._runtime.get("clip")
            if clip is not None:  # ||g|| as the model gave it, on grad_norm's scale, not clipped
                norms = self._runtime["grad_norms"]
                for i, (_, st) in enumerate(stats):
                    if norms is None:  # (sharded: the kernels' ||g / clip||, times clip)
                        st[:, 0] *= clip.to(st.device)
                    else:
                        # the read pass's own per-tensor norms: ||g / clip|| * clip was
                        # 0 * inf = NaN in every row when one gradient held an inf or NaN.
                        # (rows of a skipped step stay NaN)
                        st[:, 0] = torch.where(st[:, 1].isnan(), st[:, 0], norms[i].to(st))
            first = plan[0].device
            self._runtime["stats"] = StepStats(
                params=[p for ps, _ in stats for p in ps],
                values=torch.cat([_moved(s, first) for _, s in stats]),
                grad_norm=self._runtime["grad_norm"], names=self._stats_names(plan))
        return loss

    @staticmethod
    def _stats_names(plan: list) -> tuple:
        """The stats rows' param names (torch's "param_names" of their groups), () if none."""
        # len, not bool: torch 2.11's dynamo cannot trace bool(list)
        if not any(len(b.names) > 0 for b in plan):
            return ()
        names = []
        for b in plan:  # (list +=: a generator over 1,000 names took 23 us of a 1.2 ms step)
            names += b.names if len(b.names) > 0 else [None] * len(b.params)
        return tuple(names)

    def _hypers(self, group: dict) -> tuple:
        """(name, value) of what the kernels read from one-element tensors (lr, and beta1,
        momentum or weight_decay in the subclasses)."""
        return (("lr", group["lr"]),)

    def _check_hypers(self) -> None:
        """Those hyperparameters of every group, as edited since construction, before anything
        is written: a bad one of a later group was refused by its op after earlier groups had
        stepped, some with messages naming no argument ("Cannot copy out of meta tensor",
        "Boolean value of Tensor with more than one value is ambiguous")."""
        for gi, group in enumerate(self.param_groups):
            for name, value in self._hypers(group):
                where = f"{name} of param group {gi}"
                if isinstance(value, (int, float)):  # (first: torch 2.11's dynamo cannot
                    continue                          # trace hasattr on a SymFloat)
                if not isinstance(value, torch.Tensor):
                    if not hasattr(value, "__float__"):  # (a number, a numpy scalar or array)
                        raise TypeError(f"{where} must be a number or a tensor, got "
                                        f"{type(value).__name__}")
                    continue
                if value.numel() != 1:
                    raise ValueError(f"{where} must hold one value, got shape {list(value.shape)}")
                if not value.is_floating_point():
                    raise TypeError(f"{where} must be floating point, got {value.dtype}")
                if value.is_meta and any(p.device.type != "meta" for p in group["params"]):
                    raise ValueError(f"{where} is on the meta device (no value) but its params "
                                     f"are not")

    def _run_bucket_step(self, b, grads, lr, grad_scale, found_inf, stats):
        if b.started is not None:
            self._run_maybe_first(b, grads, lr, grad_scale, found_inf, stats)
        else:
            self._run(b, grads, lr, grad_scale, found_inf, stats)

    def _run(self, b, grads, lr, grad_scale, found_inf, stats):
        if b.spec is not None and self._sharded_update_needs_norms(b.group):
            self._run_sharded_bucket(b, grads, lr, grad_scale, found_inf, stats)
        else:
            self._run_bucket(b, grads, lr, grad_scale, found_inf, stats)
            if stats is not None and b.spec is not None:
                stats[:, :3] = distributed.sharded_norms(stats[:, :3], b.spec)

    def _run_maybe_first(self, b, grads, lr, grad_scale, found_inf, stats):
        """A bucket whose first step (buf = d, not momentum*0 + (1-dampening)*d) may still be
        ahead: only the device knows (b.started). Both updates are launched and each is
        skipped on the device unless it is the right one, so memory is read once."""
        started = b.started
        found = torch.zeros_like(started) if found_inf is None else found_inf.to(started.dtype)
        first_stats = None if stats is None else torch.full_like(stats, float("nan"))
        self._run(b, grads, lr, grad_scale, found + started, first_stats)
        self._run(b.later, grads, lr, grad_scale, found + (1 - started), stats)
        if stats is not None:
            stats.copy_(torch.where(started != 0, stats, first_stats))
        started.copy_(torch.maximum(started, (found == 0).to(started.dtype)))

    def _read_pass(self, plan, grads, grad_scale, found_inf):
        """What reads every gradient before the updates: LossScaler's inf check and the
        _prepare hook (LAMB's global norm); returns the gradient divisor."""
        if getattr(self, "_check_inf", False) and found_inf is not None:
            self._check_nonfinite(plan, grads, found_inf, grad_scale)
        return self._prepare(plan, grads, grad_scale, found_inf)

    def _check_nonfinite(self, plan, grads, found_inf, grad_scale):
        """LossScaler's inf check for optimizers whose update has no global read pass of the
        gradients before it: one read-only pass (GradScaler reads and writes them). It also
        gives the global gradient norm for free."""
        self._global_grad_norm(plan, grads, grad_scale, found_inf)

    def _global_grad_norm(self, plan, grads, grad_scale, found_inf=None) -> torch.Tensor:
        """L2 norm of every gradient of the optimizer, unscaled by grad_scale when a scaler
        gave one (as the stats' per-tensor norms: it was reported times the loss scale); the
        gradients of sharded DTensors count whole. With found_inf, also the inf check: the
        norm is inf or NaN where a gradient is. The scaled gradients are measured unscaled,
        their squares in float64 (multi_tensor_norm's inv_scale): squared in float32, a
        GradScaler scale of 2^76 (bf16 autocast, ~120k steps without an inf) made a gradient
        of 0.1 an inf norm, and LAMB's clipping then zeroed the step."""
        by_place: dict = {}
        spans = []  # each bucket's (place key, start, length) in by_place
        for b, bucket_grads in zip(plan, grads):
            key = (b.device, b.spec, b.dtype == torch.float64)
            place = by_place.setdefault(key, [])
            spans.append((key, len(place), len(bucket_grads)))
            place.extend(bucket_grads)
        # with track_stats, the per-tensor norms too (the same read): each bucket's ||g|| as
        # the model gave it (sharded: the kernels' norms, which step() scales back)
        per_tensor = self.track_stats and all(b.spec is None for b in plan)
        first = plan[0].device
        sq, per_place = [], {}
        inv = None if grad_scale is None else grad_scale.double().reciprocal()
        # keyed by the place's key, not id(list): dynamo on torch 2.11 cannot trace id()
        for key, gs in by_place.items():
            device, spec, wide = key
            total, per_place[key] = _norms_of(gs, wide, per_tensor,
                                              None if inv is None else _moved(inv, device))
            sq.append(_moved(distributed.sharded_norms(total, spec), first))
        self._runtime["grad_norms"] = None
        if per_tensor:
            self._runtime["grad_norms"] = [per_place[key][start:start + n]
                                           for key, start, n in spans]
        if len({t.dtype for t in sq}) > 1:
            sq = [t.double() for t in sq]
        total = sq[0] if len(sq) == 1 else torch.linalg.vector_norm(torch.stack(sq))
        if found_inf is not None:
            found_inf.add_((~torch.isfinite(total)).to(found_inf.dtype).to(found_inf.device))
        self._runtime["grad_norm"] = total
        return total

    def _prepare(self, plan, grads, grad_scale, found_inf):
        """Hook before the updates (LAMB's global clipping); returns the gradient divisor.
        A clipping coefficient (>= 1) folded into it goes into _runtime["clip"]."""
        return grad_scale

    def _run_bucket(self, bucket: Bucket, grads: list, lr: torch.Tensor, grad_scale, found_inf,
                    stats) -> None:
        raise NotImplementedError

    def _sharded_update_needs_norms(self, group: dict) -> bool:
        """True where the update itself needs whole-tensor norms (LAMB, LARS when it adapts):
        a bucket of sharded DTensors then goes to _run_sharded_bucket, which all-reduces them."""
        return False

    def _run_sharded_bucket(self, bucket: Bucket, grads: list, lr: torch.Tensor, grad_scale,
                            found_inf, stats) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- monitoring
    def last_stats(self) -> Optional[StepStats]:
        """Per-tensor ||g||, ||p||, ||update|| and trust ratio of the last step, computed
        inside the update kernels (`track_stats=True`), or None."""
        return self._runtime["stats"]

    # ---------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        """torch's state dict. Momentum buffers whose first step is still ahead (every step
        of theirs so far skipped for inf/NaN, SGD/LARS with dampening) are left out, as torch
        has none then: either loader starts them with buf = d. Finding them reads their
        device flags on the host, once per call and only when there are such flags. The
        post-hooks run last, on the dict as returned (they had seen those buffers, and one
        returning a dict of another shape made this raise KeyError)."""
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = type(post_hooks)()
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
        self._leave_out_unstarted_buffers(sd)
        for hook in post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def _leave_out_unstarted_buffers(self, sd: dict) -> None:
        cohort_of = self._runtime["cohort_of"]
        if not cohort_of:
            return
        started = torch.stack([t.to("cpu") for t in self._runtime["started"]]).tolist()
        unstarted = {p for p, c in cohort_of.items() if started[c] == 0}
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p in unstarted and index in sd["state"]:
                    kept = {k: v for k, v in sd["state"][index].items() if k != "momentum_buffer"}
                    if kept:
                        sd["state"][index] = kept
                    else:
                        del sd["state"][index]
                index += 1

    def __getstate__(self) -> dict:
        # torch keeps defaults, state and param_groups: deepcopy and pickle keep these too
        state = super().__getstate__()
        state["master_weights"], state["track_stats"] = self.master_weights, self.track_stats
        state["_first_step_flags"] = (self._runtime["started"], self._runtime["cohort_of"])
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # torch's loader casts every state tensor to its param's dtype; fp32 master weights
        # and fp32 moments of fp16/bf16 params must keep their precision, so they are set
        # aside and restored after it.
        state_dict = copy.copy(state_dict)
        # the pre-hooks first, as torch runs them, so that the state set aside below is the
        # one they return (it had been the one given: a hook's moments were overwritten)
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        for hook in pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_state = {k: dict(v) for k, v in state_dict["state"].items()}
        keep = {}
        for pid, st in saved_state.items():
            kept = {k: v for k, v in st.items()
                    if isinstance(v, torch.Tensor) and k != "step" and v.dtype == torch.float32}
            keep[pid] = kept
        state_dict["state"] = saved_state
        # the post-hooks last, on the state as loaded here (torch's loader ran them before the
        # fp32 moments and masters were put back: what they wrote there was lost)
        post_hooks = self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = type(pre_hooks)()  # (run above)
        self._optimizer_load_state_dict_post_hooks = type(post_hooks)()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        for group in self.param_groups:  # tensor betas (torch's capturable Adam takes them)
            if "betas" in group and any(isinstance(b, torch.Tensor) for b in group["betas"]):
                group["betas"] = floats_of_betas(group["betas"])
        # loaded momentum buffers have had their first step
        self._runtime["started"], self._runtime["cohort_of"] = [], {}
        id_map = dict(zip((i for g in state_dict["param_groups"] for i in g["params"]),
                          (p for g in self.param_groups for p in g["params"])))
        for pid, kept in keep.items():
            p = id_map.get(pid)
            if p is None:
                continue
            uses_master = self.master_weights and p.dtype in _LOW_PRECISION
            for k, v in kept.items():
                if k == "master_param" and not uses_master:
                    continue
                if k == "master_param" or uses_master:
                    self.state[p][k] = v.to(device=p.device, dtype=torch.float32)
            if "master_param" in self.state[p]:
                if uses_master:  # checked against the param at the next step
                    self._runtime["loaded_masters"][id(p)] = True
                else:  # unused here: it would go stale, and come back in a later checkpoint
                    del self.state[p]["master_param"]
            step = self.state[p].get("step")
            if isinstance(step, torch.Tensor) and step.device != p.device:
                self.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
        self._invalidate()
        for hook in post_hooks.values():
            hook(self)

    def __setstate__(self, state: dict) -> None:
        flags = state.pop("_first_step_flags", None)
        super().__setstate__(state)
        self.__dict__.setdefault("master_weights", False)
        self.__dict__.setdefault("track_stats", False)
        self._reset_runtime()
        if flags is not None:
            self._runtime["started"], self._runtime["cohort_of"] = flags


def _norms_of(grads: list, wide: bool, per_tensor: bool, inv_scale=None) -> tuple:
    """L2 norm of `grads` (times inv_scale, when given), and each one's if per_tensor (else
    None): float32 from the fused kernel, or float64 for float64 grads (a float32 norm put
    float64 LAMB's clipped update 1e-8 off the float64 reference)."""
    if not wide:
        return ops.multi_tensor_l2norm(grads, per_tensor=per_tensor, inv_scale=inv_scale)
    per = torch.stack(torch._foreach_norm(grads))
    if inv_scale is not None:
        per = per * inv_scale
    return torch.linalg.vector_norm(per), (per if per_tensor else None)


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
