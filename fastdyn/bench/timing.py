"""Timing: interleaved rounds (every implementation once per round), median per
implementation, so slow drifts of a shared machine hit all of them alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Optional

import torch


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable, device: torch.device, inner: int) -> float:
    """Seconds per call, averaged over `inner` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def compare(fns: Dict[str, Callable], device: torch.device, rounds: int = 7,
            min_time: float = 0.05, reset: Optional[Callable] = None) -> Dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds. `reset`
    (untimed) runs before each function's warm-up and each timed sample: calls that change
    the shared tensors (clipping shrinks them) start every sample from the same state."""
    reset = reset or (lambda: None)
    inner = {}
    for name, fn in fns.items():
        reset()
        fn()  # warm up (allocations, compilation, caches)
        _sync(device)
        one = max(time_once(fn, device, 1), 1e-7)
        inner[name] = max(1, min(1000, int(min_time / one)))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            reset()
            _sync(device)
            samples[name].append(time_once(fn, device, inner[name]))
    return {name: statistics.median(v) for name, v in samples.items()}
