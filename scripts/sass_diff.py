"""Compare the SASS of CUDA sources between a git revision and the working tree.

Without a GPU a CUDA refactor cannot be run, but it can be compiled: when every kernel's
machine code is unchanged (up to register names and addresses) the refactor changed nothing
that runs. Used on the SGD/LARS/LAMB launcher merge of 2026-12-02.

    .venv/bin/python scripts/sass_diff.py HEAD csrc/cuda/lars.cu csrc/cuda/sgd.cu [--arch 90]

Kernels are paired in the order the object file lists them (their mangled names change with
a rename). Per pair it prints "same", or how many instructions only one side has.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import setup as build  # noqa: E402  (the toolkit setup.py finds, and its nvcc flags; sets CUDA_HOME)


def toolkit_tool(name: str) -> str:
    """nvcc or cuobjdump of the toolkit setup.py builds with (cuobjdump from Triton's copy
    where the toolkit lacks it, as on this project's CPU machines)."""
    if not build.TOOLKIT:
        sys.exit("no CUDA toolkit found (set CUDA_HOME to the folder whose bin/ holds nvcc)")
    path = os.path.join(build.TOOLKIT, "bin", name)
    if not os.access(path, os.X_OK) and name == "cuobjdump":
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin", name)
    if not os.access(path, os.X_OK):
        sys.exit(f"{name} not found in {build.TOOLKIT}/bin")
    return path


def compile_sass(nvcc: str, cuobjdump: str, source: Path, include: Path, arch: str, out: Path) -> dict:
    """Compiles `source` as setup.py does, for one architecture; SASS per kernel, normalized."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    incs = [f"-I{include}"] + [f"-I{p}" for p in include_paths(device_type="cuda")]
    incs.append(f"-I{sysconfig.get_paths()['include']}")
    flags = [*COMMON_NVCC_FLAGS, *build.NVCC_FLAGS, "-DFASTDYN_WITH_CUDA", "-Xcompiler", "-fPIC",
             "-std=c++20", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
             f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    subprocess.run([nvcc, *incs, *flags, "-c", str(source), "-o", str(out)], check=True)
    dump = subprocess.run([cuobjdump, "-sass", str(out)], check=True, capture_output=True, text=True).stdout
    kernels, name = {}, None
    for line in dump.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            kernels[name] = []
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if m and name:
            kernels[name].append(normalize(m.group(1)))
    return kernels


def normalize(ins: str) -> str:
    ins = ins.replace(".reuse", "")             # operand-cache hints
    ins = re.sub(r"\bU?R\d+\b", "R", ins)       # register names
    ins = re.sub(r"\bU?P\d\b", "P", ins)        # predicates
    return re.sub(r"0x[0-9a-f]+", "X", ins)     # addresses, parameter offsets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="git revision to compare against, e.g. HEAD")
    ap.add_argument("sources", nargs="+", help="CUDA files, relative to the repository")
    ap.add_argument("--arch", default="90")
    args = ap.parse_args()
    nvcc, cuobjdump = toolkit_tool("nvcc"), toolkit_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp, "old")
        old_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev, "csrc"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "xf", "-", "-C", str(old_tree)], input=archive, check=True)
        for src in args.sources:
            old = compile_sass(nvcc, cuobjdump, old_tree / src, old_tree / "csrc/include", args.arch,
                               Path(tmp, "old.o"))
            new = compile_sass(nvcc, cuobjdump, REPO / src, REPO / "csrc/include", args.arch,
                               Path(tmp, "new.o"))
            print(f"{src}: {len(old)} kernels at {args.rev}, {len(new)} now")
            for (name_a, a), (_, b) in zip(old.items(), new.items()):
                ca, cb = collections.Counter(a), collections.Counter(b)
                only_old, only_new = sum((ca - cb).values()), sum((cb - ca).values())
                if a == b:
                    verdict = "same"
                elif not only_old and not only_new:
                    verdict = "same instructions, other order"
                else:
                    verdict = f"{only_old} instructions only before, {only_new} only now (of {len(a)})"
                print(f"  {len(a):5d} {verdict:<52} {name_a[:100]}")


if __name__ == "__main__":
    main()
