"""One optimizer step inside a profiler range, for Nsight Compute:

    ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section Occupancy --section LaunchStats python benchmarks/profile_step.py adamw

Ops: adamw, lamb (max_grad_norm + loss scale, as in the GPU table), sgd, lars, clip (clipping,
as in the benchmarks); the torch fused AdamW/SGD steps as `torch-adamw` and `torch-sgd`, to
compare in the same report.
Parameter set: FASTDYN_PROFILE_SET (default gpt2-small; the kernels are the same as on gpt-1b,
and the profiled replays cost less).
"""

import os
import sys

import torch

import fastdyn
from fastdyn.bench import cases
from fastdyn.bench.params import PARAM_SETS, make_params


def make_step(op: str, params):
    if op == "adamw":
        return fastdyn.optim.AdamW(params, lr=1e-3).step
    if op == "torch-adamw":
        return torch.optim.AdamW(params, lr=1e-3, fused=True).step
    if op == "sgd":
        return fastdyn.optim.SGD(params, lr=1e-3, momentum=0.9).step
    if op == "torch-sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, fused=True).step
    if op == "lars":
        return fastdyn.optim.LARS(params, lr=1e-3, weight_decay=1e-4).step
    if op == "lamb":  # the benchmarks' "lamb-amp": LossScaler's scale and folded inf check
        return cases.with_loss_scale(fastdyn.optim.LAMB(params, lr=1e-3, max_grad_norm=1.0)).step
    if op == "clip":  # clipping at every call, the profiled one included, as the benchmarks'
        max_norm = cases.ShrinkingMaxNorm([p.grad for p in params])
        return lambda: fastdyn.clip_grad_norm_(params, max_norm())
    raise SystemExit(f"unknown op {op!r}")


def main(op: str) -> None:
    params = make_params(PARAM_SETS[os.environ.get("FASTDYN_PROFILE_SET", "gpt2-small")](), "cuda")
    step = make_step(op, params)
    for _ in range(3):  # state allocated, caches warm
        step()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "adamw")
