"""Compiles every Triton kernel variant that fastdyn launches for an sm_90 GPU, with no GPU:
Triton's interpreter (how the tests run here) never compiles, so a kernel that only the GPU
compiler refuses, or whose math it lowers differently, would otherwise first show on a lent
GPU. Run by tests/ops/test_triton_compiles.py in a process without TRITON_INTERPRET (the
kernels must be JITFunctions, not interpreted ones); prints one JSON line per variant.

    python tests/ops/triton_gpu_compile.py [--arch 90]
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import pkgutil
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import fastdyn.ops.triton as triton_ops
from fastdyn.ops.triton import _multi_tensor as mt
from fastdyn.ops.triton import adam, lamb, norm, sgd

F32, F16, BF16 = tl.float32, tl.float16, tl.bfloat16
# (param, state) dtypes and master weights, as the optimizers pair them
PARAM_STATE = ((F32, F32, False), (F16, F32, True), (BF16, BF16, False))
CHUNKS = dict(CHUNK_=mt.CHUNK, BLOCK_=mt.BLOCK)
# PTX instructions counted per variant: the approximate ones must not appear
COUNTED = ("div.full.f32", "div.approx", "sqrt.approx", "div.rn.f32", "sqrt.rn.f32", "atom.")


def variants():
    """(name, kernel, pointer dtypes other than *fp32, constexprs) of every launch shape."""
    out = []
    for elem, is_max, unscale in itertools.product((F32, F16, BF16), (False, True), (False, True)):
        # placeholders for the pointers a variant does not read are the float64 partials
        placeholder = "*fp32" if unscale else "*fp64"
        out.append((f"norm {elem} max={is_max} unscale={unscale}", norm._norm_chunks_kernel,
                    dict(rows_ptr="*i64", partials_ptr="*fp64", inv_scale_ptr=placeholder,
                         found_inf_ptr=placeholder),
                    dict(N_COLS=4, ELEM=elem, IS_MAX=is_max, UNSCALE=unscale, **CHUNKS)))
    for elem in (F32, F16, BF16):  # LARS's ||g|| of scaled grads (triton/lars.py)
        out.append((f"norm {elem} squares in float64", norm._norm_chunks_kernel,
                    dict(rows_ptr="*i64", partials_ptr="*fp64", inv_scale_ptr="*fp64",
                         found_inf_ptr="*fp64"),
                    dict(N_COLS=4, ELEM=elem, IS_MAX=False, UNSCALE=False, SQUARE_F64=True,
                         **CHUNKS)))
    for elem in (F32, F16, BF16):
        out.append((f"scale {elem}", norm._scale_kernel, dict(rows_ptr="*i64"),
                    dict(N_COLS=4, ELEM=elem, **CHUNKS)))
    for acc, k, is_max, out_ptr in ((F32, 3, False, "*fp32"), (tl.float64, 1, False, "*fp64"),
                                    (tl.float64, 1, False, "*fp32"), (F32, 1, True, "*fp32")):
        out.append((f"segment_sum acc={acc} k={k} max={is_max} out={out_ptr}",
                    mt._segment_sum_kernel,
                    dict(partials_ptr="*fp64" if acc == tl.float64 else "*fp32",
                         begin_ptr="*i64", out_ptr=out_ptr),
                    dict(K=k, COL=0, IS_MAX=is_max, ACC=acc, SEG_BLOCK=128, N_BLOCKS=4096)))
    for step_dtype, has_found_inf in itertools.product((F32, tl.float64), (False, True)):
        out.append((f"steps {step_dtype} found_inf={has_found_inf}", mt._increment_steps_kernel,
                    dict(rows_ptr="*i64", found_inf_ptr="*fp32" if has_found_inf else "*i64"),
                    dict(N_COLS=4, HAS_FOUND_INF=has_found_inf, STEP_DTYPE=step_dtype)))
    rows = dict(rows_ptr="*i64")
    for (p, s, master), amsgrad, decoupled, flags in itertools.product(
            PARAM_STATE, (False, True), (False, True), (False, True)):
        out.append((f"adam {p}/{s} master={master} amsgrad={amsgrad} decoupled={decoupled} "
                    f"flags={flags}", adam._adam_kernel, rows,
                    dict(N_COLS=9, P_DT=p, S_DT=s, HAS_MASTER=master, AMSGRAD=amsgrad,
                         MAXIMIZE=flags, DECOUPLED=decoupled, HAS_SCALE=flags,
                         HAS_FOUND_INF=flags, STATS=flags, **CHUNKS)))
    for (p, s, master), is_lars, first, has_buf, nesterov, flags in itertools.product(
            PARAM_STATE, (False, True), (False, True), (False, True), (False, True),
            (False, True)):
        out.append((f"momentum {p}/{s} master={master} lars={is_lars} first={first} "
                    f"buf={has_buf} nesterov={nesterov} flags={flags}",
                    sgd._momentum_update_kernel, rows,
                    dict(N_COLS=7, P_DT=p, S_DT=s, HAS_MASTER=master, HAS_BUF=has_buf,
                         NESTEROV=nesterov, MAXIMIZE=flags and not is_lars, FIRST_STEP=first,
                         LARS=is_lars, ADAPT=is_lars and flags, HAS_SCALE=flags,
                         HAS_FOUND_INF=flags, STATS=flags, **CHUNKS)))
    for (p, s, master), flags in itertools.product(PARAM_STATE, (False, True)):
        common = dict(N_COLS=8, P_DT=p, S_DT=s, HAS_MASTER=master, HAS_FOUND_INF=flags, **CHUNKS)
        out.append((f"lamb_moments {p}/{s} master={master} flags={flags}",
                    lamb._lamb_moments_kernel, rows, dict(common, HAS_SCALE=flags)))
        out.append((f"lamb_apply {p}/{s} master={master} flags={flags}",
                    lamb._lamb_apply_kernel, rows, dict(common, APPLIED=flags)))
    return out


def all_kernels() -> set:
    """Every `*_kernel` JITFunction in fastdyn.ops.triton's modules."""
    found = set()
    for info in pkgutil.iter_modules(triton_ops.__path__):
        module = importlib.import_module(f"{triton_ops.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and isinstance(obj, triton.runtime.jit.JITFunction):
                found.add(f"{info.name}.{name}")
    return found


def signature(kernel, pointers: dict, constexprs: dict) -> dict:
    sig = {}
    for p in kernel.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = pointers.get(p.name, "*fp32")
        else:  # the kernels' runtime scalars are Python floats: fp32
            sig[p.name] = "fp32"
    return sig


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    target = GPUTarget("cuda", parser.parse_args().arch, 32)
    covered = set()
    for name, kernel, pointers, constexprs in variants():
        covered.add(f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}")
        row = {"variant": name}
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature(
                kernel, pointers, constexprs), constexprs=constexprs), target=target)
            ptx = compiled.asm["ptx"]
            row["counts"] = {k: ptx.count(k) for k in COUNTED if k in ptx}
        except Exception as e:  # reported per variant: one failure does not hide the others
            row["error"] = f"{type(e).__name__}: {str(e).strip()[-2000:]}"
        print(json.dumps(row), flush=True)
    print(json.dumps({"uncovered": sorted(all_kernels() - covered)}), flush=True)
    return 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: interpreted kernels do not compile")
    sys.exit(main())
