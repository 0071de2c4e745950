"""Times one fastdyn optimizer step on one thread with its arrays in the CPU's caches (8
fp32 tensors of 128K elements: 1M parameters, 16-24 MB of p, g and state), where the step is
bound by arithmetic rather than memory. A full-size benchmark (`fastdyn bench`) cannot see a
5% change in a step's arithmetic on a shared VM: its runs scatter by 30% or more.

For a change of build flags or of the per-element code, build each variant, keep a copy of
its fastdyn/_C*.so, and interleave runs of the copies (each in its own process):

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/step_in_cache.py lamb lars

Prints, per optimizer, the fastest median of 7 rounds of 30 steps, in ms.
"""

import argparse
import time

import torch

import fastdyn

OPTIMIZERS = {
    "lamb": lambda ps: fastdyn.optim.LAMB(ps, lr=1e-3, max_grad_norm=1.0),
    "lars": lambda ps: fastdyn.optim.LARS(ps, lr=0.1, weight_decay=1e-4),
    "adamw": lambda ps: fastdyn.optim.AdamW(ps, lr=1e-3),
    "sgd": lambda ps: fastdyn.optim.SGD(ps, lr=0.1, momentum=0.9),
}


def time_step(name: str, rounds: int = 7, steps: int = 30) -> float:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(131072)) for _ in range(8)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    opt = OPTIMIZERS[name](params)
    for _ in range(20):  # state allocated, caches warm
        opt.step()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[steps // 2])
    return min(medians)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(" ".join(f"{name} {time_step(name) * 1e3:.3f}" for name in args.optimizers))


if __name__ == "__main__":
    main()
