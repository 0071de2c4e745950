"""fastdyn.amp.LossScaler: dynamic loss scaling for fp16 training, like
torch.amp.GradScaler, with the inf/NaN check folded into the optimizer's own pass over the
gradients.

GradScaler unscales the gradients in a pass of its own (read and write every gradient)
before a fused optimizer reads them again. With a fastdyn optimizer, LossScaler hands the
scale to the step, whose kernels divide the gradients as they read them; the non-finite
check rides on the optimizer's global-norm pass (LAMB with max_grad_norm: no extra pass at
all) or on one read-only pass. The scale then grows or backs off on the device, with
GradScaler's rule (torch._amp_update_scale_), so nothing waits for the device.

    scaler = LossScaler()
    loss = model(x).loss
    scaler.scale(loss).backward()
    scaler.step(optimizer)   # skipped on the device if a gradient is inf/NaN
    scaler.update()
"""

from __future__ import annotations

import re
import warnings
from collections import abc
from typing import Optional

import torch

import fastdyn.ops as ops
from fastdyn import distributed

# GradScaler's message (and type) for a call before scale()
_NOT_SCALED = ("Attempted {} but _scale is None.  This may indicate your script did not use "
               "scaler.scale(loss or outputs) earlier in the iteration.")


class LossScaler:
    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if growth_factor <= 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) <= 0:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval}")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.device = torch.device(device)
        if enabled and self.device.type == "cuda" and not torch.cuda.is_available():
            # as GradScaler: a script written for a GPU still runs (unscaled) on a machine without
            warnings.warn("fastdyn.amp.LossScaler is enabled, but CUDA is not available.  "
                          "Disabling.", stacklevel=2)
            enabled = False
        self.enabled = enabled
        self._init_scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._init_growth_tracker = 0
        self._scale: Optional[torch.Tensor] = None
        self._growth_tracker: Optional[torch.Tensor] = None
        self._found_inf: dict = {}      # id(optimizer) -> found_inf tensor of this iteration
        self._unscaled: dict = {}       # id(optimizer) -> found_inf from unscale_
        self.last_grad_norm: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ scaling
    def _lazy_init(self, device: torch.device):
        if self._scale is None:
            self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)
            self._growth_tracker = torch.full((), self._init_growth_tracker, dtype=torch.int32,
                                              device=device)

    def scale(self, outputs):
        """outputs * scale: a tensor, or an iterable of them (lists and tuples keep their
        type, other iterables come back as a lazy map, as from GradScaler)."""
        if not self.enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            self._lazy_init(outputs.device)
            return outputs * self._scale.to(outputs.device, non_blocking=True)
        if isinstance(outputs, abc.Iterable):
            scaled = map(self.scale, outputs)
            return type(outputs)(scaled) if isinstance(outputs, (list, tuple)) else scaled
        raise ValueError(f"outputs must be a Tensor or an iterable of Tensors, got "
                         f"{type(outputs).__name__}")

    def _new_found_inf(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=self._scale.device)

    @torch.no_grad()  # (as GradScaler's: gradients made with create_graph=True require grad)
    def unscale_(self, optimizer) -> None:
        """Unscale the gradients in place now (e.g. before clipping them yourself): one fused
        read and write per device, which also checks them for inf/NaN and gives their norm."""
        if not self.enabled:
            return
        if id(optimizer) in self._found_inf:  # it would divide the gradients a second time
            raise RuntimeError("unscale_() is being called after step().")
        if id(optimizer) in self._unscaled:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if self._scale is None:
            raise AssertionError(_NOT_SCALED.format("unscale_"))  # (GradScaler's type)
        found_inf = self._new_found_inf()
        inv = self._scale.double().reciprocal().float()
        names: dict = {}
        by_place = _grads_by_place(optimizer, write_back=True, names=names)
        for grads in by_place.values():  # (refused before any gradient is written, as torch)
            for g in grads:
                ops.checks.refuse_internal_overlap(g)
        sq = []
        for (device, spec), grads in by_place.items():
            f = found_inf if device == found_inf.device else torch.zeros_like(found_inf, device=device)
            # a view with gaps (a hand-assigned slice) is unscaled in a dense copy, written
            # back: GradScaler writes the caller's view too
            dense = _dense_copies(grads)
            try:
                total, _ = ops.multi_tensor_unscale_norm_(dense, inv.to(device), f)
            except ValueError as e:  # (one gradient for two params: GradScaler divides it twice)
                raise ValueError(re.sub(r"\btensors\[(\d+)\]",
                                        lambda m: names[(device, spec)][int(m[1])], str(e))) from None
            for g, d in zip(grads, dense):
                if d is not g:
                    g.copy_(d)
            if spec is not None:  # every rank that holds a shard of these grads skips alike
                spec.all_reduce_(f, op="max")
                total = distributed.sharded_norms(total, spec)
            if f is not found_inf:
                found_inf.add_(f.to(found_inf.device))
            sq.append(total.to(found_inf.device) ** 2)
        if sq:
            self.last_grad_norm = torch.stack(sq).sum().sqrt()
        # None: unscaled, but without gradients nothing was checked (GradScaler's empty
        # found_inf_per_device): step() or update() say so
        self._unscaled[id(optimizer)] = found_inf if by_place else None

    def step(self, optimizer, *args, **kwargs):
        """optimizer.step(), skipped (on the device) when a gradient is inf or NaN."""
        if not self.enabled:
            return optimizer.step(*args, **kwargs)
        if self._scale is None:
            raise AssertionError(_NOT_SCALED.format("step"))
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if LossScaler is enabled.")
        if id(optimizer) in self._found_inf:
            raise RuntimeError("step() has already been called since the last update().")
        was_unscaled = id(optimizer) in self._unscaled
        unscaled = self._unscaled.get(id(optimizer))
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            # A plain torch optimizer: unscale in a pass of our own, and decide on the host
            # (as GradScaler does for such optimizers).
            if not was_unscaled:
                self.unscale_(optimizer)
                unscaled = self._unscaled[id(optimizer)]
            if unscaled is None:
                raise AssertionError("No inf checks were recorded for this optimizer.")
            self._found_inf[id(optimizer)] = unscaled
            if unscaled.item() == 0:
                return optimizer.step(*args, **kwargs)
            return None
        found_inf = unscaled if unscaled is not None else self._new_found_inf()
        # fastdyn's optimizers fold the inf check into their own pass over the gradients;
        # another amp-aware one (torch's fused optimizers) only reads found_inf: fill it first
        folds = getattr(optimizer, "_folds_inf_check", False)
        checked = True
        if not was_unscaled and not folds:
            checked = _flag_nonfinite(optimizer, found_inf)
        optimizer.grad_scale = None if was_unscaled else self._scale
        optimizer.found_inf = found_inf
        if folds:
            optimizer._check_inf = not was_unscaled
        try:
            out = optimizer.step(*args, **kwargs)
        finally:
            del optimizer.grad_scale
            del optimizer.found_inf
            if folds:
                del optimizer._check_inf
        if was_unscaled:
            checked = unscaled is not None
        elif folds:
            checked = optimizer._runtime["had_grads"]
        if not checked:
            # stepped without gradients, so nothing was checked: as with GradScaler,
            # update() then finds no inf check (unless another optimizer made one)
            self._found_inf[id(optimizer)] = None
            return out
        grad_norm = getattr(optimizer, "_runtime", {}).get("grad_norm")
        if grad_norm is not None and not was_unscaled:
            self.last_grad_norm = grad_norm
        self._found_inf[id(optimizer)] = found_inf
        return out

    def update(self, new_scale: Optional[float] = None) -> None:
        """Grow the scale after growth_interval good steps, back off after a bad one
        (GradScaler's rule, on the device)."""
        if not self.enabled:
            return
        if self._scale is None:
            raise AssertionError(_NOT_SCALED.format("update"))
        if new_scale is not None:
            self._scale.fill_(float(new_scale))
        elif any(f is not None for f in (*self._found_inf.values(), *self._unscaled.values())):
            # an optimizer only unscaled (its step skipped by the caller) counts too, as in
            # GradScaler
            flags = {**self._unscaled, **self._found_inf}
            found = [f.to(self._scale.device, non_blocking=True) for f in flags.values()
                     if f is not None]
            total = found[0]
            for f in found[1:]:
                total = total + f
            torch._amp_update_scale_(self._scale, self._growth_tracker, total, self._growth_factor,
                                     self._backoff_factor, self._growth_interval)
        else:  # as GradScaler: neither step() nor unscale_() since the last update
            raise AssertionError("No inf checks were recorded prior to update.")
        self._found_inf = {}
        self._unscaled = {}

    # ------------------------------------------------------------------ inspection / state
    def get_scale(self) -> float:
        """The current scale (reads the device: not for the hot path)."""
        if not self.enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    def found_inf(self, optimizer) -> Optional[torch.Tensor]:
        """The device flag of `optimizer`'s step in this iteration (nonzero: it was skipped),
        until update() (None then, and before the step): read it between step() and
        update()."""
        return self._found_inf.get(id(optimizer))

    def is_enabled(self) -> bool:
        return self.enabled

    # GradScaler's accessors
    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = new_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = new_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = new_interval

    def _get_growth_tracker(self) -> int:
        if not self.enabled:
            return 0
        if self._growth_tracker is None:
            return self._init_growth_tracker
        return int(self._growth_tracker.item())

    def state_dict(self) -> dict:
        """GradScaler's keys, so the two can load each other's state."""
        if not self.enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": (self._init_growth_tracker if self._growth_tracker is None
                                else int(self._growth_tracker.item())),
        }

    def __getstate__(self) -> dict:
        """Pickling (and deepcopy) as GradScaler: only between iterations (GradScaler's error
        type), since an iteration's inf flags are keyed by optimizer ids; the scale travels as
        a number, re-made on the device of the next scale()."""
        state = self.__dict__.copy()
        if self.enabled:
            if self._found_inf or self._unscaled:
                raise AssertionError("A LossScaler instance may only be pickled at the beginning "
                                     "of an iteration, or at the end after scaler.update().")
            state["_init_scale"] = self.get_scale()
            state["_init_growth_tracker"] = self._get_growth_tracker()
            state["_scale"] = state["_growth_tracker"] = None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if not self.enabled:
            return
        if not state_dict:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of LossScaler.")
        self._init_scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:
            self._scale.fill_(self._init_scale)
            self._growth_tracker.fill_(self._init_growth_tracker)


def _grads_by_place(optimizer, write_back: bool = False, names: Optional[dict] = None) -> dict:
    """(device, ShardSpec of DTensor shards or None) -> the local gradients there. DTensor
    gradients placed unlike their params (pending sums, Partial) are redistributed to the
    params' placements, as the step takes them; `write_back`: into p.grad (for unscale_,
    which writes them). `names`, if given, gets the same keys -> each gradient's name."""
    by_place: dict = {}
    for gi, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is not None:
                if g.is_sparse:
                    raise ValueError("LossScaler does not support sparse gradients")
                placed = distributed.in_param_placements(g, p)
                if write_back and placed is not g:
                    p.grad = placed
                spec = distributed.shard_spec(placed, f"params[{i}].grad")
                by_place.setdefault((placed.device, spec), []).append(distributed.local(placed))
                if names is not None:
                    names.setdefault((placed.device, spec), []).append(
                        f"params[{i}].grad of param group {gi}")
    return by_place


def _dense_copies(grads: list) -> list:
    """`grads` with the views that have gaps (the kernels walk dense memory) copied dense."""
    return [g if ops.checks._dense(g) else g.contiguous() for g in grads]


def _flag_nonfinite(optimizer, found_inf: torch.Tensor) -> bool:
    """found_inf += 1 where a gradient of `optimizer` holds an inf or NaN: one read of them
    (GradScaler's check also writes them back). A max-abs norm, which no finite gradient
    overflows: inf or NaN exactly when an element is. False: there were no gradients."""
    by_place = _grads_by_place(optimizer)
    for (device, spec), grads in by_place.items():
        bad = (~torch.isfinite(ops.multi_tensor_norm(_dense_copies(grads), float("inf"))[0])).float()
        if spec is not None:  # every rank that holds a shard of these grads skips alike
            spec.all_reduce_(bad, op="max")
        found_inf.add_(bad.to(found_inf.device))
    return bool(by_place)
