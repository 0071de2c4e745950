"""The `fastdyn` command line (also `python -m fastdyn`).

  fastdyn info     torch version, which backends were built, whether a GPU is visible
  fastdyn demo     a short end-to-end training run with the fused LAMB step
  fastdyn bench    the CPU/GPU benchmarks of the fused ops against torch's (prints a table)
"""

from __future__ import annotations

import argparse
import platform
import sys


def info() -> dict:
    import torch

    import fastdyn
    from fastdyn._extension import build_info
    from fastdyn.ops.backend import triton_available

    built = build_info()
    triton_version = None
    if triton_available():
        import triton

        triton_version = triton.__version__
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "fastdyn": fastdyn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "built_against_torch": built["built_against_torch"],
        "backends": {
            "cpu": {"built": True, "openmp": built["openmp"], "threads": torch.get_num_threads()},
            "cuda": {"built": built["cuda"], "cuda_version": built["cuda_version"],
                     "archs": built["cuda_archs"]},
            "triton": {"available": triton_version is not None, "version": triton_version},
        },
        "gpus": gpus,
        "default_backend": {"cpu": fastdyn.ops.backend_for(torch.device("cpu")),
                            "cuda": fastdyn.ops.backend_for(torch.device("cuda"))},
    }


def _print_info(d: dict) -> None:
    b = d["backends"]
    print(f"fastdyn {d['fastdyn']}  (python {d['python']})")
    print(f"torch   {d['torch']}  (CUDA {d['torch_cuda'] or 'none'}; extension built against "
          f"{d['built_against_torch']})")
    print("backends:")
    print(f"  cpu     built (C++, OpenMP {'on' if b['cpu']['openmp'] else 'off'}, "
          f"{b['cpu']['threads']} threads)")
    if b["cuda"]["built"]:
        archs = ", ".join("sm_" + a.replace(".", "") for a in b["cuda"]["archs"])
        print(f"  cuda    built (CUDA {b['cuda']['cuda_version']}, {archs})")
    else:
        print("  cuda    not built (no CUDA toolkit at build time, or FASTDYN_CUDA=0)")
    t = b["triton"]
    print(f"  triton  {'available, ' + t['version'] if t['available'] else 'not installed'}")
    print(f"GPU:    {', '.join(d['gpus']) if d['gpus'] else 'none visible'}")
    print(f"default backend: cpu -> {d['default_backend']['cpu']}, cuda -> {d['default_backend']['cuda']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastdyn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, built backends, GPU")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_demo = sub.add_parser("demo", help="a short end-to-end training run")
    p_demo.add_argument("--steps", type=int, default=600)
    p_demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_bench = sub.add_parser("bench", help="benchmarks against torch's ops (table)")
    p_bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    p_bench.add_argument("--only", default=None, help="comma list: norm,unscale,clip,clip-clipping,adamw,sgd,lamb,lamb-amp,lars")
    p_bench.add_argument("--device", default=None)
    p_bench.add_argument("--json", default=None, help="also write the results to this file")
    p_bench.add_argument("--sets", default="gpt2-small,1000-small",
                         help="parameter sets: gpt2-small, gpt-1b, 1000-small")
    p_bench.add_argument("--dtype", default="float32",
                         help="of params, grads and state: float32, bfloat16 or float16")
    args = parser.parse_args(argv)

    if args.command == "info":
        d = info()
        if args.json:
            import json

            print(json.dumps(d, indent=2))
        else:
            _print_info(d)
        return 0
    if args.command == "demo":
        from fastdyn.demo import run

        return run(steps=args.steps, device=args.device, seed=args.seed)
    if args.command == "bench":
        from fastdyn.bench import run_cli

        return run_cli(quick=args.quick, only=args.only, device=args.device, json_path=args.json,
                       sets=tuple(args.sets.split(",")), dtype=args.dtype)
    return 2


if __name__ == "__main__":
    sys.exit(main())
