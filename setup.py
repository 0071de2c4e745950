"""Build of fastdyn._C: the CPU kernels always, the CUDA kernels when this torch is a CUDA
build and a CUDA toolkit is found. No GPU is needed to build.

Environment:
  FASTDYN_CUDA=0|1        force the CUDA kernels off / on (on fails loudly without a toolkit)
  CUDA_HOME               the toolkit folder (its bin/ holds nvcc, its lib64/ libcudart)
  TORCH_CUDA_ARCH_LIST    architectures, default "8.0;9.0" (A100, H100/H200)
  FASTDYN_CPU_FLAGS       compiler flags for the CPU kernels (default: AVX2/FMA/F16C if present)
  FASTDYN_NO_EXT=1        install the Python package only; build the extension afterwards
                          with `python setup.py build_ext --inplace` (incremental, what
                          scripts/setup.sh does)
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"
# --fmad=false: as the CPU's -ffp-contract=off (below), no multiply-add fused but those the
# headers write (math::fmadd), so a kernel and its track_stats twin give the same bits.
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "--fmad=false"]  # beside torch's own


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and (
        glob.glob(os.path.join(path, "lib64", "libcudart.so*"))
        or glob.glob(os.path.join(path, "lib", "libcudart.so*"))
    )


def find_cuda_toolkit():
    """The toolkit's own folder. An `nvcc` on PATH may be a wrapper script, which is why
    torch's own guess (the parent of `which nvcc`) cannot be trusted."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    candidates = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            return os.path.realpath(path)
    return None


def cpu_arch_flags():
    """AVX2/FMA/F16C when the building machine has them: the extension is built from source
    on the machine that runs it. The norm and update loops run ~2x faster with them than
    with the x86-64 baseline (SSE2, software fp16 conversion). FASTDYN_CPU_FLAGS overrides
    (e.g. "" for a portable build, "-march=native")."""
    override = os.environ.get("FASTDYN_CPU_FLAGS")
    if override is not None:
        return override.split()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    if {"avx2", "fma", "f16c"} <= set(flags):
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


def want_cuda(torch_cuda_version, toolkit):
    flag = os.environ.get("FASTDYN_CUDA")
    if flag == "0":
        print("fastdyn: FASTDYN_CUDA=0, building the CPU kernels only")
        return False
    if torch_cuda_version is None:
        msg = "this torch is a CPU-only build"
    elif toolkit is None:
        msg = "no CUDA toolkit found (set CUDA_HOME to the folder whose bin/ holds nvcc)"
    else:
        return True
    if flag == "1":
        sys.exit(f"fastdyn: FASTDYN_CUDA=1 but {msg}")
    print(f"fastdyn: building the CPU kernels only: {msg}")
    return False


TOOLKIT = find_cuda_toolkit()
if TOOLKIT:
    # torch.utils.cpp_extension reads CUDA_HOME once, when first imported: set it before.
    os.environ["CUDA_HOME"] = TOOLKIT


def extension():
    toolkit = TOOLKIT
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = want_cuda(torch.version.cuda, toolkit)
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    torch_version = torch.__version__.split("+")[0]
    define = [("FASTDYN_TORCH_VERSION", f'"{torch_version}"')]
    # -fno-trapping-math: GCC may then compute both arms of a select on floats, which the
    # branch-free fp16 conversions need to vectorize (fp16 loops ran scalar without it);
    # results do not change, and nothing here reads floating-point exception flags.
    # -ffp-contract=off: a * b + c stays two roundings unless written math::fmadd. GCC had
    # fused some into FMAs in one loop of a kernel and not in its twin (track_stats'), and a
    # step with statistics came out 1 ulp off the same step without (Adam with L2 decay,
    # masters).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
           "-ffp-contract=off"] + cpu_arch_flags()
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if not with_cuda:
        return CppExtension(
            "fastdyn._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    print(f"fastdyn: building the CUDA kernels with {toolkit} for sm {archs}")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define += [
        ("FASTDYN_WITH_CUDA", None),
        ("FASTDYN_CUDA_VERSION", f'"{torch.version.cuda}"'),
        ("FASTDYN_CUDA_ARCHS", f'"{archs}"'),
    ]
    return CUDAExtension(
        "fastdyn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define,
        extra_compile_args={"cxx": cxx, "nvcc": NVCC_FLAGS},
        extra_link_args=["-fopenmp"],
    )


def main():
    from torch.utils.cpp_extension import BuildExtension

    no_ext = os.environ.get("FASTDYN_NO_EXT") == "1"
    setup(
        packages=find_packages(include=["fastdyn", "fastdyn.*"]),
        ext_modules=[] if no_ext else [extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
