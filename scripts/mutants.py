"""Mutation check: does the test-suite notice a wrong line? ("A test that cannot fail is a
defect.") Each mutant below is one plausible bug (a skipped-step flag kept, a NaN dropped
by a max, a scale not divided out); the script applies it in a scratch copy of the
repository, runs the tests that should catch it (-x) and reports which survived. A survivor
is a missing test or an equivalent mutant (then say why and drop it).

    .venv/bin/python scripts/mutants.py                 # the Python and Triton mutants (~35 min)
    .venv/bin/python scripts/mutants.py --only M10,T3   # some of them
    .venv/bin/python scripts/mutants.py --native        # the C++ ones too: one CPU build of the
                                                        # copy (~10 min), then ~2 min a mutant

2026-12-07, first run: 54 mutants (these 53, and one in code since deleted); 9 survived. Eight
got tests: M10 (the per-tensor ||g|| column under a loss scale), T3 (Triton's amsgrad NaN
max), T5 (a NaN in a long tensor's first chunk, lost by Triton's combining max), D1 (sharded
LARS under GradScaler), X1/X2 (LAMB's and LARS's ratio at a zero gradient), X4 (LAMB's NaN
ratio under trust_clip), X12 (an inf in the list's last chunk, unflagged by the CPU unscale);
one was dead code (AdamW.load_state_dict: torch's loader runs __setstate__, which already
keeps the decay decoupled), deleted.

2026-12-07, second run: 39 more (LossScaler, clip's general and DTensor paths, the trust-ratio
ops of the Triton and sharded steps, Triton SGD/LARS/norm/clip, the argument checks, the C++
LAMB/LARS/SGD/Adam math, version counters, the overlap and requires-grad checks); 5 survived.
Four got tests: P8 (update() reading the last optimizer's inf flag only: two optimizers under
one scaler), P10 (a step after unscale_ replacing last_grad_norm with the clipped norm), Q1
(Triton LAMB's ratio at ||u|| = 0: the float32 contract test adapts without weight decay
now), K1 (the fake kernels not refusing a view with gaps). One, X14 (CUDA's lamb_with_beta1
ignoring grad_averaging=False), is code the CPU never runs: csrc/tests/test_math.cpp (ctest)
kills it, checked by hand; dropped here, as this script runs pytest only.
A third (9: state-dict loading, master weights, the float64 norm, the sharded steps) left
two: M17 (loaded masters kept by an optimizer without master weights until its first step)
has a test; D5 (the sharded LARS ratio from a bf16 param's norm instead of its fp32
master's) is near-equivalent, the two norms differing by bf16 rounding, far inside what two
ranks' bf16 gradients differ by, and is kept as a known survivor. FSDP2 with bf16 params
and master weights had had no test at all: it has one now (masters sharded like the params,
params their masters rounded, training as in one process).
2026-12-07, later: M20/M21 (the stats rows' names, moved onto the plan's buckets), killed;
the second by a check added for it (compiled FSDP2 steps keep their rows' names). M22 (the
plan holding the params from C++ too, not only the state): killed by
test_params_stay_swappable_after_steps, written for it. M23 and X24/X25 (the plan's checks of
swapped-in state and of params given new storage, moved into the extension): killed.
2026-12-08: M2, M10, D1, D5 moved onto the norms taken with inv_scale (float64 squares of
loss-scaled gradients); T19, T20, X26-X28 (those squares and their unscaling on the Triton
and CPU paths) added. All killed but D5, the known near-equivalent survivor. T13 (Triton
LARS unscaling by inv, not inv^2) dropped: that LARS now takes ||g|| from scaled_norms (T20).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
OPT, OPS, TRITON = "tests/optim", "tests/ops", "tests/ops tests/optim -k triton"
AMP, CLIP = "tests/optim/test_amp.py", "tests/ops/test_clip.py"
# the trust-ratio ops serve the Triton backend and the sharded (FSDP2, tensor parallel) steps
SHARDED_OR_TRITON = "tests/ops tests/optim tests/distributed -k 'triton or fsdp2 or tensor_parallel'"

# (id, file, exact text (must occur once), replacement, tests that should fail)
PYTHON_MUTANTS = [
    ("M1", "fastdyn/optim/optimizer.py", "(found == 0).to(started.dtype)))",
     "(found != 0).to(started.dtype)))", OPT),
    ("M2", "fastdyn/optim/optimizer.py", "None if inv is None else _moved(inv, device))",
     "None)", OPT),
    ("M3", "fastdyn/optim/optimizer.py", "found_inf.add_((~torch.isfinite(total))",
     "found_inf.add_((torch.isnan(total))", OPT),
    ("M4", "fastdyn/optim/optimizer.py", "elif cached[1] != value:", "elif False:", OPT),
    ("M5", "fastdyn/optim/optimizer.py",
     "st[:, 0] = torch.where(st[:, 1].isnan(), st[:, 0], norms[i].to(st))",
     "st[:, 0] = norms[i].to(st)", OPT),
    ("M6", "fastdyn/optim/optimizer.py", "and addresses.matches(plain)", "and True", OPT),
    ("M7", "fastdyn/optim/optimizer.py", 'if k == "master_param" or uses_master:',
     'if k == "master_param":', OPT),
    ("M8", "fastdyn/optim/optimizer.py",
     "    if not ops.checks.same_layout(t, p):\n        t = torch.empty_like",
     "    if False:\n        t = torch.empty_like", OPT),
    ("M9", "fastdyn/optim/optimizer.py", "            self._check_state_memory(specs)",
     "            pass", OPT),
    ("M10", "fastdyn/optim/optimizer.py",
     "inv = None if grad_scale is None else grad_scale.double().reciprocal()",
     "inv = None if grad_scale is None else grad_scale.double()", OPT),
    ("M12", "fastdyn/optim/optimizer.py", "if absent and len(absent) < len(ps):", "if False:", OPT),
    ("M13", "fastdyn/optim/optimizer.py",
     "fixed.copy_(torch.where(fixed.to(p.dtype) == p.detach(), fixed, p.detach().float()))",
     "fixed.copy_(fixed)", OPT),
    ("L1", "fastdyn/optim/lamb.py", "torch.clamp(total / max_norm, min=1.0)", "(total / max_norm)",
     OPT),
    ("L2", "fastdyn/optim/lamb.py", 'bool(g["trust_clip"]), bool(g["always_adapt"]), grad_scale',
     'bool(g["trust_clip"]), False, grad_scale', OPT),
    ("L3", "fastdyn/optim/lamb.py", "if self._max_grad_norm() is None:", "if False:", OPT),
    ("L4", "fastdyn/optim/lamb.py", 'float(g["eps"]), self._hyper_tensor',
     'float(g["eps"]) * 10, self._hyper_tensor', OPT),
    ("R1", "fastdyn/optim/lars.py", "isinstance(wd, torch.Tensor) and wd == 0",
     "isinstance(wd, torch.Tensor) and wd >= 0", OPT),
    ("R2", "fastdyn/optim/lars.py", 'bool(g["nesterov"]), float(g["trust_coeff"])',
     'bool(g["nesterov"]), float(g["trust_coeff"]) * 1.0001', OPT),
    ("A1", "fastdyn/optim/adam.py", "float(beta2),\n                  self._hyper",
     "float(beta2) - 0.001,\n                  self._hyper", OPT),
    ("A2", "fastdyn/optim/adam.py", 'bool(g["amsgrad"]), bool(g["maximize"])',
     'bool(g["amsgrad"]), False', OPT),
    ("S1", "fastdyn/optim/sgd.py", 'return group["momentum"] != 0 and group["dampening"] != 0',
     "return False", OPT),
    ("S2", "fastdyn/optim/sgd.py",
     '        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):\n'
     '            raise ValueError("Nesterov momentum requires a momentum and zero dampening")\n'
     "\n    def __setstate__", "\n    def __setstate__", OPT),
    ("P2", "fastdyn/amp.py", "if unscaled.item() == 0:", "if True:", "tests/optim/test_amp.py"),
    ("P3", "fastdyn/amp.py", "optimizer._check_inf = not was_unscaled",
     "optimizer._check_inf = False", "tests/optim/test_amp.py"),
    ("P4", "fastdyn/amp.py", '            checked = optimizer._runtime["had_grads"]',
     "            checked = True", "tests/optim/test_amp.py"),
    ("P5", "fastdyn/amp.py", "total, self._growth_factor,\n                                     "
     "self._backoff_factor,", "total, 1.0 / self._backoff_factor,\n"
     "                                     1.0 / self._growth_factor,", "tests/optim/test_amp.py"),
    ("P7", "fastdyn/amp.py", "            self.last_grad_norm = grad_norm", "            pass",
     "tests/optim/test_amp.py"),
    ("C1", "fastdyn/clip.py", "(total + 1e-6), max=1.0)\n    for device, device_grads",
     "(total + 1e-5), max=1.0)\n    for device, device_grads", "tests/ops/test_clip.py"),
    ("C2", "fastdyn/clip.py",
     "    if error_if_nonfinite and not torch.isfinite(total.to(out_dtype)):\n"
     "        raise RuntimeError(_NONFINITE_MESSAGE.format(norm_type))\n"
     "    if not torch.compiler.is_compiling():",
     "    if False:\n        raise RuntimeError(_NONFINITE_MESSAGE.format(norm_type))\n"
     "    if not torch.compiler.is_compiling():", "tests/ops/test_clip.py"),
    ("C3", "fastdyn/clip.py", "return (g != 0).any().to(dtype)", "return (g != 0).sum().to(dtype)",
     "tests/ops/test_clip.py"),
    ("C4", "fastdyn/clip.py", 'norm = spec.all_reduce_(norm.contiguous(), op="max")',
     'norm = spec.all_reduce_(norm.contiguous(), op="sum")', "tests/distributed"),
    ("D1", "fastdyn/optim/sharded.py",
     "inv = None if grad_scale is None else grad_scale.double().reciprocal()", "inv = None",
     "tests/distributed"),
    ("D2", "fastdyn/optim/sharded.py",
     "            new = torch.where(found_inf.reshape(()) != 0, stats, new)", "            pass",
     "tests/distributed"),
    ("D3", "fastdyn/optim/sharded.py",
     "        stats[:, :3] = distributed.sharded_norms(stats[:, :3], b.spec)", "        pass",
     "tests/distributed"),
    ("T1", "fastdyn/ops/triton/lamb.py", "step = tl.load(lr_ptr) * tl.load(ratio_ptr + t)",
     "step = tl.load(lr_ptr) * tl.load(ratio_ptr)", TRITON),
    ("T2", "fastdyn/ops/triton/lamb.py", "g2 = tl.fma(g, g, g2)", "g2 = g * g", TRITON),
    ("T3", "fastdyn/ops/triton/adam.py", "vm = tl.where((vm != vm) | (vm > v), vm, v)",
     "vm = tl.where(vm > v, vm, v)", TRITON),
    ("T5", "fastdyn/ops/triton/_multi_tensor.py", "acc = tl.where((acc != acc) | (acc > v), acc, v)",
     "acc = tl.where(acc > v, acc, v)", TRITON),
    ("T6", "fastdyn/ops/triton/_multi_tensor.py",
     "        new = torch.where(found_inf.reshape(()) != 0, stats, new)", "        pass", TRITON),
    ("T7", "fastdyn/ops/triton/adam.py", "                p2 = tl.fma(p_old, p_old, p2)",
     "                p2 = tl.fma(p, p, p2)", TRITON),
    ("T8", "fastdyn/ops/triton/_multi_tensor.py", "rounded = bits + 0x7FFF + ((bits >> 16) & 1)",
     "rounded = bits + 0x7FFF", TRITON),
    ("P8", "fastdyn/amp.py", "                total = total + f\n", "                total = f\n", AMP),
    ("P9", "fastdyn/amp.py", "optimizer.grad_scale = None if was_unscaled else self._scale",
     "optimizer.grad_scale = self._scale", AMP),
    ("P10", "fastdyn/amp.py", "if grad_norm is not None and not was_unscaled:",
     "if grad_norm is not None:", AMP),
    ("P11", "fastdyn/amp.py",
     "bad = (~torch.isfinite(ops.multi_tensor_norm(_dense_copies(grads), float(\"inf\"))[0])).float()",
     "bad = (torch.isnan(ops.multi_tensor_norm(_dense_copies(grads), float(\"inf\"))[0])).float()", AMP),
    ("P12", "fastdyn/amp.py", '"_growth_tracker": (self._init_growth_tracker if self._growth_tracker is None\n'
     "                                else int(self._growth_tracker.item())),",
     '"_growth_tracker": self._init_growth_tracker,', AMP),
    ("P13", "fastdyn/amp.py", '            state["_init_scale"] = self.get_scale()\n', "", AMP),
    ("P14", "fastdyn/amp.py", "            for g, d in zip(grads, dense):\n                if d is not g:\n"
     "                    g.copy_(d)\n", "", AMP),
    ("C5", "fastdyn/clip.py", "    for g in other:\n        g.mul_(coef.to(g.device, g.dtype))\n", "", CLIP),
    ("C6", "fastdyn/clip.py", "    total = torch.linalg.vector_norm(parts, 1.0 if norm_type == 0 else norm_type)",
     "    total = torch.linalg.vector_norm(parts, norm_type)", CLIP),
    ("C7", "fastdyn/clip.py", "norm = spec.all_reduce_(norm.pow(norm_type)).pow_(1.0 / norm_type)",
     "norm = norm", "tests/distributed"),
    ("C8", "fastdyn/clip.py", "nonzero = spec.all_reduce_(nonzero, op=\"max\")",
     "nonzero = spec.all_reduce_(nonzero, op=\"sum\")", "tests/distributed"),
    ("Q1", "fastdyn/ops/trust_ratio.py", "torch.where((param_norms > 0) & (update_norms > 0), param_norms",
     "torch.where((param_norms > 0), param_norms", SHARDED_OR_TRITON),
    ("Q2", "fastdyn/ops/trust_ratio.py", "return (r / lr.reshape(()).to(r.dtype)).clamp(max=1.0) if trust_clip else r",
     "return r", SHARDED_OR_TRITON),
    ("Q3", "fastdyn/ops/trust_ratio.py", "(grad_norms + weight_decay * param_norms + eps)",
     "(grad_norms + weight_decay * grad_norms + eps)", SHARDED_OR_TRITON),
    ("Q4", "fastdyn/ops/trust_ratio.py", "    return ratios if adapt else torch.ones_like(ratios)",
     "    return ratios", SHARDED_OR_TRITON),
    ("Q5", "fastdyn/ops/trust_ratio.py",
     "    r = torch.where((param_norms > 0) & (grad_norms > 0), r, torch.ones_like(r))",
     "    r = torch.where((param_norms > 0), r, torch.ones_like(r))", SHARDED_OR_TRITON),
    ("T9", "fastdyn/ops/triton/sgd.py", "                if MAXIMIZE:\n                    d = -g\n", "", TRITON),
    ("T10", "fastdyn/ops/triton/sgd.py", "+ (1.0 - dampening) * d", "+ d", TRITON),
    ("T11", "fastdyn/ops/triton/sgd.py", "                    d = d + momentum * buf", "                    d = buf",
     TRITON),
    ("T12", "fastdyn/ops/triton/sgd.py", "                    if weight_decay != 0.0:  # (0 * an inf p is NaN)",
     "                    if True:  # (0 * an inf p is NaN)", TRITON),
    ("T14", "fastdyn/ops/triton/norm.py", "bad = bad | ((x - x) != (x - x)).to(tl.int32)",
     "bad = bad | (x != x).to(tl.int32)", TRITON),
    ("T15", "fastdyn/ops/triton/norm.py", "    if s != 1.0:", "    if s < 1.0:", TRITON),
    ("T16", "fastdyn/ops/triton/clip.py", "    coef = coef.clamp(max=1.0)",
     "    coef = torch.where(coef < 1.0, coef, torch.ones_like(coef))", TRITON),
    ("T17", "fastdyn/ops/triton/norm.py",
     "r = tl.where(has_nan, float(\"nan\"), tl.max(acc, axis=0)).to(tl.float64)",
     "r = tl.max(acc, axis=0).to(tl.float64)", TRITON),
    ("T18", "fastdyn/ops/triton/norm.py",
     "            total = total.masked_fill(per.isnan().any(), float(\"nan\"))\n", "", TRITON),
    ("K1", "fastdyn/ops/checks.py", "        if not _dense(t):\n            raise ValueError(\n"
     "                f\"{name}[{i}] is not dense", "        if False:\n            raise ValueError(\n"
     "                f\"{name}[{i}] is not dense", OPS),
    ("K2", "fastdyn/optim/optimizer.py",
     "                if grad.dtype != p.dtype:\n                    raise TypeError(f\"the gradient",
     "                if False:\n                    raise TypeError(f\"the gradient", OPT),
    ("K3", "fastdyn/optim/optimizer.py",
     "                    if isinstance(t, torch.Tensor) and t.shape != p.shape:",
     "                    if False:", OPT),
    ("M14", "fastdyn/optim/optimizer.py",
     'if isinstance(v, torch.Tensor) and k != "step" and v.dtype == torch.float32}',
     'if False}', OPT),
    ("M15", "fastdyn/optim/optimizer.py",
     "                return _moved(value, device, torch.float32)\n",
     "                return _moved(value, device)\n", OPT),
    ("M16", "fastdyn/optim/optimizer.py",
     '                    self._runtime["loaded_masters"][id(p)] = True', "                    pass", OPT),
    ("M17", "fastdyn/optim/optimizer.py",
     '                    del self.state[p]["master_param"]', "                    pass", OPT),
    ("M18", "fastdyn/optim/optimizer.py",
     "    return torch.linalg.vector_norm(per), (per if per_tensor else None)",
     "    return torch.linalg.vector_norm(per, float(\"inf\")), (per if per_tensor else None)", OPT),
    ("M19", "fastdyn/optim/optimizer.py", "        self._leave_out_unstarted_buffers(sd)\n", "", OPT),
    # the stats rows' names (torch's param_names), carried by the plan's buckets
    ("M20", "fastdyn/optim/optimizer.py", 'b.names.append(group["param_names"][i])', "pass", OPT),
    ("M21", "fastdyn/optim/plan.py", "indices=self.indices, names=self.names, state_dicts=",
     "indices=self.indices, state_dicts=", "tests/distributed -k compiled_step"),
    # C++ references to the state, never to the params (swap_tensors refuses those)
    ("M22", "fastdyn/optim/optimizer.py", "b.held_state = hold([*chain.from_iterable(",
     "b.held_state = hold([*b.params, *chain.from_iterable(", OPT),
    ("M23", "fastdyn/optim/optimizer.py", "return dict_values_are(dicts, values) \\",
     "return True \\", OPT),
    ("D4", "fastdyn/optim/sharded.py", "update_norm = lr.to(ratios.dtype) * ratios * u_norm",
     "update_norm = ratios * u_norm", "tests/distributed"),
    ("D5", "fastdyn/optim/sharded.py", "multi_tensor_l2norm(b.master_params or b.params,",
     "multi_tensor_l2norm(b.params,", "tests/distributed"),
    # norms of loss-scaled values: squares in float64, then unscaled (2026-12-08)
    ("T19", "fastdyn/ops/triton/norm.py", "SQUARE_F64=square_in_float64, **LAUNCH)",
     "SQUARE_F64=False, **LAUNCH)", TRITON),
    ("T20", "fastdyn/ops/triton/norm.py", "square_in_float64=True) * (factor * factor)",
     "square_in_float64=True) * factor", TRITON),
    ("D6", "fastdyn/distributed.py", "return spec.all_reduce_(norms.square().contiguous()).sqrt_()",
     "return spec.all_reduce_(norms.contiguous())", "tests/distributed"),
]

NATIVE_TESTS = "-k 'not triton and not cuda'"
NATIVE_MUTANTS = [
    ("X1", "csrc/include/fastdyn/math/lamb.h",
     "(param_norm > T(0) && update_norm > T(0)) ? param_norm / update_norm",
     "(param_norm > T(0)) ? param_norm / update_norm",
     f"tests/ops/test_lamb.py tests/optim/test_lamb_lars.py {NATIVE_TESTS}"),
    ("X2", "csrc/include/fastdyn/math/lars.h", "T r = (param_norm > T(0) && grad_norm > T(0))",
     "T r = (param_norm > T(0))",
     f"tests/ops/test_lars.py tests/optim/test_lamb_lars.py {NATIVE_TESTS}"),
    ("X3", "csrc/include/fastdyn/math/lars.h", "r = r > T(1) ? T(1) : r;", "r = r < T(1) ? r : T(1);",
     f"tests/ops/test_lars.py tests/optim/test_lamb_lars.py {NATIVE_TESTS}"),
    ("X4", "csrc/include/fastdyn/math/lamb.h", "return (trust_clip && r > T(1)) ? T(1) : r;",
     "return (trust_clip && !(r <= T(1))) ? T(1) : r;",
     f"tests/ops/test_lamb.py tests/optim/test_lamb_lars.py {NATIVE_TESTS}"),
    ("X5", "csrc/include/fastdyn/cpu/lane_sums.h", "      lanes_b[0] = math::fmadd(b, b, lanes_b[0]);",
     "      lanes_b[0] = b * b;", f"tests/ops {NATIVE_TESTS}"),
    ("X6", "csrc/include/fastdyn/cpu/update_common.h", "trust_ratios.empty() ? 1.f :",
     "trust_ratios.empty() ? 0.f :", f"tests/ops {NATIVE_TESTS}"),
    ("X7", "csrc/include/fastdyn/cpu/multi_tensor.h",
     "    const int64_t n = ts[t].numel();\n    plan.total_elems += n;",
     "    const int64_t n = static_cast<int32_t>(ts[t].numel());\n    plan.total_elems += n;",
     "tests/ops/test_norm.py -k 2_pow_31"),
    ("X9", "csrc/include/fastdyn/math/norm.h", "return coef < A(1) || coef != coef ? coef : A(1);",
     "return coef < A(1) ? coef : A(1);", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X10", "csrc/include/fastdyn/math/adam.h",
     "s.param_decay = h.decoupled_weight_decay && h.weight_decay != 0.0",
     "s.param_decay = h.decoupled_weight_decay", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X11", "csrc/include/fastdyn/math/adam.h",
     "g = s.coupled_decay != H(0) ? s.grad_sign * g + s.coupled_decay * p : s.grad_sign * g;",
     "g = s.grad_sign * g + s.coupled_decay * p;", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X12", "csrc/cpu/unscale.cpp", "for (size_t i = 0; i < plan.chunks.size(); ++i) {\n    if (bad[i])",
     "for (size_t i = 0; i + 1 < plan.chunks.size(); ++i) {\n    if (bad[i])",
     f"tests/ops/test_unscale.py {NATIVE_TESTS}"),
    ("X13", "csrc/include/fastdyn/cpu/momentum_update.h", "    norm_p = p_old;", "    norm_p = pv;",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X15", "csrc/include/fastdyn/math/lamb.h",
     "bias_correction ? T(1.0 / fsqrt(1.0 - fpow(h.beta2_exact, step))) : T(1);",
     "T(1.0 / fsqrt(1.0 - fpow(h.beta2_exact, step)));", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X16", "csrc/include/fastdyn/math/sgd.h", "h.momentum * buf + (H(1) - h.dampening) * d;",
     "h.momentum * buf + d;", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X17", "csrc/include/fastdyn/math/lars.h",
     "return (weight_decay != H(0) ? g + weight_decay * p : g) * trust_ratio;",
     "return g * trust_ratio + weight_decay * p;", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X18", "csrc/include/fastdyn/math/lars.h", "    r = r / lr;\n", "",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X19", "csrc/include/fastdyn/math/adam.h", "fsqrt(amsgrad ? vmax : v)", "fsqrt(v)",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    # the plan's checks of swapped-in state tensors and of params given new storage
    ("X24", "csrc/module.cpp", "if (k == n || PyList_GET_ITEM(values.ptr(), k) != value) return false;",
     "if (k == n) return false;", f"tests/optim {NATIVE_TESTS}"),
    ("X25", "csrc/module.cpp", "if (address_of(t) != addresses[i++]) return false;", "++i;",
     f"tests/optim {NATIVE_TESTS}"),
    # norms of loss-scaled values: squares in float64, then unscaled (2026-12-08)
    ("X26", "csrc/include/fastdyn/cpu/norm_kernels.h",
     "return K == NormKind::L2 ? partial * inv_scale * inv_scale", "return K == NormKind::L2 ? partial",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X27", "csrc/cpu/lars.cpp", "*out = {sum_squares_double(g, n) * inv_scale * inv_scale, sums[0], 0.0};",
     "*out = {sum_squares_double(g, n) * inv_scale, sums[0], 0.0};", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X28", "csrc/include/fastdyn/cpu/norm_kernels.h",
     "      partials[i] = inv_scale ? tensor_chunk_partial<K, true>(ts[c.tensor], c)",
     "      partials[i] = inv_scale ? tensor_chunk_partial<K, false>(ts[c.tensor], c)",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X20", "csrc/version_counters.cpp", "for (const c10::IValue& t : v.toListRef()) bump(t);", "",
     f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X21", "csrc/include/fastdyn/checks.h", "other == nullptr || s.begin >= other->end,",
     "other == nullptr || s.begin != other->begin,", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X22", "csrc/include/fastdyn/checks.h", "TORCH_CHECK(!grad_mode || !t.requires_grad(), u.name,",
     "TORCH_CHECK(true, u.name,", f"tests/ops tests/optim {NATIVE_TESTS}"),
    ("X23", "csrc/include/fastdyn/checks.h", "TORCH_CHECK_VALUE(t.is_non_overlapping_and_dense(), name,",
     "TORCH_CHECK_VALUE(true, name,", f"tests/ops tests/optim {NATIVE_TESTS}"),
]


def scratch_copy(native: bool) -> Path:
    """The tracked files (as in the working tree) and the built extension in a temp folder,
    whose fastdyn the tests there import (pytest puts the rootdir first on sys.path)."""
    dst = Path(tempfile.mkdtemp(prefix="fastdyn-mutants-"))
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    for so in (REPO / "fastdyn").glob("_C*.so"):
        shutil.copy2(so, dst / "fastdyn" / so.name)
    if native:
        build(dst)
    return dst


def build(root: Path) -> bool:
    env = dict(os.environ, FASTDYN_CUDA="0", MAX_JOBS=str(os.cpu_count() or 2))
    return subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=root, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def run(root: Path, mutant, native: bool) -> str:
    mid, rel, old, new, tests = mutant
    path = root / rel
    src = path.read_text()
    if src.count(old) != 1:
        return f"stale (the text occurs {src.count(old)} times): update or drop it"
    path.write_text(src.replace(old, new))
    try:
        if native and not build(root):
            return "killed (does not compile)"
        env = dict(os.environ, TRITON_INTERPRET="1")
        r = subprocess.run(f"{PY} -m pytest {tests} -x -q -p no:cacheprovider -o addopts=''",
                           shell=True, cwd=root, env=env, capture_output=True, text=True)
        last = (r.stdout.strip().splitlines() or [""])[-1]
        return f"killed: {last}" if r.returncode == 1 else \
            f"SURVIVED: {last}" if r.returncode == 0 else f"error {r.returncode}: {last}"
    finally:
        path.write_text(src)
        if native:
            build(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--native", action="store_true", help="also the C++ mutants (rebuilds)")
    args = ap.parse_args()
    mutants = PYTHON_MUTANTS + (NATIVE_MUTANTS if args.native else [])
    if args.only:
        wanted = set(args.only.split(","))
        mutants = [m for m in PYTHON_MUTANTS + NATIVE_MUTANTS if m[0] in wanted]
    native = any(m[1].startswith("csrc/") for m in mutants)
    root = scratch_copy(native)
    bad = 0
    try:
        for m in mutants:
            t = time.time()
            result = run(root, m, m[1].startswith("csrc/"))
            bad += not result.startswith("killed")
            print(f"{m[0]:4} {time.time() - t:5.0f} s  {result}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{len(mutants) - bad} of {len(mutants)} killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
