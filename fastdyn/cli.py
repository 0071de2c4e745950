"""The `fastdyn` command line (also `python -m fastdyn`).

  fastdyn info     torch version, which backends were built, whether a GPU is visible
  fastdyn demo     a short end-to-end training run with the fused LAMB step
  fastdyn bench    the CPU/GPU benchmarks of the fused ops against torch's (prints a table)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _cannot_run(backend: str, device_type: str):
    """Why `backend` cannot run the ops on `device_type` tensors in this process (a backend
    FASTDYN_BACKEND forces), or None."""
    from fastdyn.ops.backend import available_backends, why_triton_cannot_run_on

    if backend in available_backends(device_type):
        return None
    if backend == "triton":
        return why_triton_cannot_run_on(device_type)
    return "the native CUDA kernels were not built"


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
    defaults = {t: fastdyn.ops.backend_for(torch.device(t)) for t in ("cpu", "cuda")}
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
        "default_backend": defaults,
        "FASTDYN_BACKEND": os.environ.get("FASTDYN_BACKEND"),
        "cannot_run": {t: why for t, b in defaults.items() if (why := _cannot_run(b, t))},
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
    forced = f" (FASTDYN_BACKEND={d['FASTDYN_BACKEND']})" if d["FASTDYN_BACKEND"] else ""
    print(f"default backend: cpu -> {d['default_backend']['cpu']}, "
          f"cuda -> {d['default_backend']['cuda']}{forced}")
    for device_type, why in d["cannot_run"].items():
        print(f"  {device_type}: {why}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive integer")
    return value


def _device(text: str) -> str:
    """cpu, or cuda[:N] with that GPU visible: checked before any work, not a traceback later."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: fastdyn runs on cpu or cuda")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text!r}: no such GPU visible ({torch.cuda.device_count()} visible)")
    return text


def _names(kind: str, valid):
    """A comma list of names from `valid()` (spaces and empty entries ignored), checked before
    any case runs: an unknown name used to fail only when the loop reached it."""
    def parse(text: str) -> list:
        choices = valid()
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            what = f"unknown {kind} {', '.join(map(repr, unknown))}" if unknown else f"no {kind} given"
            raise argparse.ArgumentTypeError(f"{what} (choose from {', '.join(choices)})")
        return names
    return parse


def _ops() -> list:
    from fastdyn.bench.cases import BUILDERS

    return list(BUILDERS)


def _sets() -> list:
    from fastdyn.bench.params import PARAM_SETS

    return list(PARAM_SETS)


def _writable_path(text: str) -> str:
    """A file the results can be written to, checked before the first case is measured."""
    directory = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r}: {directory!r} is not a writable directory")
    return text


def _backend_env_error():
    """FASTDYN_BACKEND's value, when it names no backend: an error line, not a traceback from
    the first op."""
    from fastdyn.ops.backend import forced_backend

    try:
        forced_backend()
    except ValueError as e:
        return f"FASTDYN_BACKEND: {e}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastdyn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, built backends, GPU")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_demo = sub.add_parser("demo", help="a short end-to-end training run")
    p_demo.add_argument("--steps", type=_positive_int, default=600)
    p_demo.add_argument("--device", type=_device, default=None,
                        help="cpu or cuda (default: cuda if visible)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_bench = sub.add_parser("bench", help="benchmarks against torch's ops (table)")
    p_bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    p_bench.add_argument("--only", type=_names("op", _ops), default=None,
                         help="comma list: norm,unscale,clip,clip-clipping,adamw,sgd,lamb,lamb-amp,lars")
    p_bench.add_argument("--device", type=_device, default=None)
    p_bench.add_argument("--json", type=_writable_path, default=None,
                         help="also write the results to this file")
    p_bench.add_argument("--sets", type=_names("parameter set", _sets), default="gpt2-small,1000-small",
                         help="parameter sets: gpt2-small, gpt-1b, 1000-small")
    p_bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                         help="of params, grads and state")
    p_bench.add_argument("--no-compile", dest="compile", action="store_false",
                         help="leave out the torch.compile baselines (minutes of compiling a case)")
    args = parser.parse_args(argv)

    error = _backend_env_error()
    if error:
        print(f"fastdyn {args.command}: error: {error}", file=sys.stderr)
        return 2
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
                       sets=args.sets, dtype=args.dtype, compile=args.compile)
    return 2


if __name__ == "__main__":
    sys.exit(main())
