"""What a step with `track_stats=True` leaves: per-tensor norms and trust ratios, on the
device until read."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

STATS_COLUMNS = ("grad_norm", "param_norm", "update_norm", "trust_ratio")


class StepStats(NamedTuple):
    """Per-tensor statistics of the last step (`track_stats=True`).

    values[i] = (||g||, ||p|| before the step, ||update||, trust ratio) of params[i], float32
    on the device of the first parameter; NaN rows when the step was skipped (found_inf).
    ||g|| is the gradient's as the model gave it: unscaled (a loss scaler's factor removed),
    not clipped (LAMB's max_grad_norm). ||update|| is the change the step made to the value
    it holds (||p|| is that value's before the step): for fp16/bf16 params with master
    weights the fp32 master copy's; without, the 16-bit param's as rounded, which moves less
    than the step meant or not at all (changes under half its ulp are lost: the reason to
    keep master weights), and the stats show it. (LAMB on sharded DTensor params reports
    lr * r * ||u|| there: the change before rounding.)
    grad_norm: the global gradient norm (unscaled, not clipped) when the step computed one,
    else None; float64 when a float64 param is in the step.
    names[i]: params[i]'s name where its group has torch's "param_names" (the optimizer was
    given `model.named_parameters()`), else None.
    """

    params: list
    values: torch.Tensor
    grad_norm: Optional[torch.Tensor]
    columns: tuple = STATS_COLUMNS
    names: tuple = ()

    def named(self, model: Optional[torch.nn.Module] = None) -> dict:
        """{name: {column: float}} in the rows' order, read to the host at once (one copy
        from the device; call it where a sync is fine, e.g. every N steps). A row's name is
        its param's in `names`, else in `model.named_parameters()` (matched by identity),
        else "param{i}"."""
        by_id = {} if model is None else {id(p): n for n, p in model.named_parameters()}
        rows = self.values.tolist()
        names = self.names or (None,) * len(rows)
        out = {}
        for i, (p, name, row) in enumerate(zip(self.params, names, rows)):
            out[name or by_id.get(id(p), f"param{i}")] = dict(zip(self.columns, row))
        return out
