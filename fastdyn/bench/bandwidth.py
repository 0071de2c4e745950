"""Same-run memory bandwidth of the machine, measured on buffers as large as the working set
of the benchmark it is compared with (so a set that fits in the last-level cache is judged
against cache bandwidth, and a large one against DRAM)."""

from __future__ import annotations

import torch

from fastdyn.bench.timing import compare


MAX_WORKING_SET = 4 << 30


def measure(working_set: int, device: torch.device, rounds: int = 7) -> dict:
    """{"read": GB/s of a read-only reduction over `working_set` bytes, "copy": GB/s of a
    copy between two halves of it (bytes read + written)}."""
    # Past the caches a larger buffer measures the same DRAM bandwidth; the cap keeps a 1B-param
    # benchmark's buffers (16 GB) from crowding the GPU's memory.
    n = max(1, min(working_set, MAX_WORKING_SET) // 4)
    src = torch.rand(n, device=device)
    half = max(1, n // 2)
    a, b = src[:half], torch.empty(half, device=device)
    t = compare({"read": lambda: src.sum(), "copy": lambda: b.copy_(a)}, device, rounds=rounds)
    return {"read": n * 4 / t["read"] / 1e9, "copy": 2 * half * 4 / t["copy"] / 1e9}
