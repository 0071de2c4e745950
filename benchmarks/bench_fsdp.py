"""Optimizer steps on FSDP2-sharded parameters: GPT-2-small shapes as DTensors sharded on
dim 0 over WORLD gloo processes (CPU, one thread each), every step timed between barriers,
fastdyn against torch's AdamW on the same DTensors in the same run.

    .venv/bin/python benchmarks/bench_fsdp.py [--world 2] [--steps 5] [--json out.json]

A multi-process script rather than a pytest-benchmark case: each rank is its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _optimizers():
    import fastdyn.optim as fo
    from fastdyn.bench.baselines import ForeachLamb, ForeachLars

    return [
        ("fastdyn AdamW", lambda ps: fo.AdamW(ps, lr=1e-3)),
        ("torch AdamW foreach", lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True)),
        ("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
        ("fastdyn LAMB max_grad_norm", lambda ps: fo.LAMB(ps, lr=1e-3, max_grad_norm=1.0)),
        # the plain-PyTorch versions fastdyn is measured against elsewhere, on DTensors
        ("timm-style foreach LAMB max_grad_norm",
         lambda ps: ForeachLamb(ps, lr=1e-3, max_grad_norm=1.0)),
        ("fastdyn LARS", lambda ps: fo.LARS(ps, lr=0.1, weight_decay=1e-4)),
        ("timm-style foreach LARS", lambda ps: ForeachLars(ps, lr=0.1, weight_decay=1e-4)),
        ("fastdyn SGD momentum", lambda ps: fo.SGD(ps, lr=0.1, momentum=0.9)),
    ]


def _rank(rank: int, world: int, steps: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from fastdyn.bench.params import gpt2_small_shapes

    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name, make in _optimizers():
        torch.manual_seed(0)
        params = []
        for shape in gpt2_small_shapes():
            p = torch.nn.Parameter(distribute_tensor(torch.randn(shape) * 0.02, mesh, [Shard(0)]))
            p.grad = distribute_tensor(torch.randn(shape) * 1e-3, mesh, [Shard(0)])
            params.append(p)
        try:
            opt = make(params)
            opt.step()  # state created
            times = []
            for _ in range(steps):
                dist.barrier()
                t0 = time.perf_counter()
                opt.step()
                dist.barrier()
                times.append(time.perf_counter() - t0)
            results[name] = {"ms": min(times) * 1e3}
        except Exception as e:  # a baseline torch cannot run on DTensors here
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        del params
    if rank == 0:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    out_dir = tempfile.mkdtemp()
    mp.spawn(_rank, args=(args.world, args.steps, out_dir), nprocs=args.world, join=True)
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    base = results["torch AdamW foreach"].get("ms")
    print(f"GPT-2 small (124M params) sharded over {args.world} gloo ranks, 1 thread each; "
          f"best of {args.steps} steps")
    print("| optimizer | ms / step | vs torch AdamW foreach |\n|---|---|---|")
    for name, r in results.items():
        if "ms" in r:
            ratio = f"{base / r['ms']:.2f}x" if base else ""
            print(f"| {name} | {r['ms']:.1f} | {ratio} |")
        else:
            print(f"| {name} | {r['error']} | |")
    if args.json:
        env = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "python": platform.python_version(), "device": "cpu", "world": args.world,
               "threads_per_rank": 1, "params": "gpt2-small, Shard(0)"}
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
