"""Same-run memory bandwidth of the machine, measured on buffers as large as the working set
of the benchmark it is compared with (so a set that fits in the last-level cache is judged
against cache bandwidth, and a large one against DRAM)."""

from __future__ import annotations

import torch

from fastdyn.bench.timing import compare


MAX_WORKING_SET = 4 << 30


def measure(working_set: int, device: torch.device, rounds: int = 7) -> dict:
    """GB/s over `working_set` bytes of: "read", a read-only reduction; "copy", a copy between
    two halves (bytes read + written); "update", an in-place `a += b` over the two halves
    (read 2, write 1 in place), the access pattern of an optimizer step. On a CPU, copy pays
    for reading each destination line before writing it (write-allocate), which in-place
    updates do not, so updates run above copy's rate there (AdamW: 43 GB/s against a 26 GB/s
    copy, 2 cores, measured); on a GPU copy and update agree."""
    # Past the caches a larger buffer measures the same DRAM bandwidth; the cap keeps a 1B-param
    # benchmark's buffers (16 GB) from crowding the GPU's memory.
    n = max(2, min(working_set, MAX_WORKING_SET) // 4)
    src = torch.rand(n, device=device)
    half = n // 2
    a, c = src[:half], src[half:2 * half]
    dst = torch.empty(half, device=device)
    t = compare({"read": lambda: src.sum(), "copy": lambda: dst.copy_(a),
                 "update": lambda: a.add_(c)}, device, rounds=rounds)
    return {"read": n * 4 / t["read"] / 1e9, "copy": 2 * half * 4 / t["copy"] / 1e9,
            "update": 3 * half * 4 / t["update"] / 1e9}
