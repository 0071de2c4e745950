// Adam / AdamW per-element update, shared by the CPU and CUDA kernels. Same order of
// operations as torch's fused Adam (aten/src/ATen/native/cuda/fused_adam_utils.cuh), so
// results agree with torch.optim.Adam to rounding.
#pragma once
#include "fastdyn/macros.h"

namespace fastdyn {
namespace math {

// The per-element coefficients in the op's precision; the exact hyperparameters beside them
// for the per-tensor scalars. Everything derived from a beta is computed in double and
// rounded once, as torch's single-tensor Adam does in Python floats: 1 - 0.999f in float32
// is 0.00099998713, which put exp_avg_sq 1.3e-5 (relative) off torch's from the first step.
template <typename T>
struct AdamHyper {
  T beta1;
  T beta2;
  T one_minus_beta1;
  T one_minus_beta2;
  T eps;
  bool amsgrad;
  bool maximize;
  bool decoupled_weight_decay;  // AdamW
  double beta1_exact;
  double beta2_exact;
  double weight_decay;
};

template <typename T>
AdamHyper<T> adam_hyper(double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                        bool maximize, bool decoupled_weight_decay) {
  return {T(beta1), T(beta2), T(1.0 - beta1), T(1.0 - beta2), T(eps), amsgrad, maximize,
          decoupled_weight_decay, beta1, beta2, weight_decay};
}

// h with beta1 (and what derives from it) set from a value read on the device (as
// lamb_with_beta1).
template <typename T>
FASTDYN_HD AdamHyper<T> adam_with_beta1(AdamHyper<T> h, double beta1) {
  h.beta1 = T(beta1);
  h.one_minus_beta1 = T(1.0 - beta1);
  h.beta1_exact = beta1;
  return h;
}

// Per-tensor values (step count, lr and options folded into coefficients), computed once
// per chunk so the per-element update has no branch on an option: GCC 12 stopped
// vectorizing the CPU loop once it held five runtime selects.
template <typename T>
struct AdamStepScalars {
  T step_size;              // lr / (1 - beta1^t)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  T grad_sign;              // -1 with maximize
  T coupled_decay;          // weight_decay for Adam (added to g), 0 for AdamW
  T param_decay;            // 1 - lr * weight_decay for AdamW (torch's form), 1 for Adam
};

// In double (once per tensor or chunk), each rounded once to T.
template <typename T>
FASTDYN_HD AdamStepScalars<T> adam_step_scalars(const AdamHyper<T>& h, double lr, double step) {
  AdamStepScalars<T> s;
  s.step_size = T(lr / (1.0 - fpow(h.beta1_exact, step)));
  s.bias_correction2_sqrt = T(fsqrt(1.0 - fpow(h.beta2_exact, step)));
  s.grad_sign = h.maximize ? T(-1) : T(1);
  s.coupled_decay = h.decoupled_weight_decay ? T(0) : T(h.weight_decay);
  // (no decay at weight_decay 0 whatever lr is: 1 - inf * 0 made every param NaN)
  s.param_decay = h.decoupled_weight_decay && h.weight_decay != 0.0
                      ? T(1.0 - lr * h.weight_decay) : T(1);
  return s;
}

// p, m, v (and vmax with amsgrad) are updated in place; g is the unscaled gradient. Without
// coupled weight decay the p term is left out, as torch does: 0 * an inf p is NaN, which
// made the param and both moments NaN where torch keeps p inf and the moments finite.
// T holds the values, H the hyperparameters: the same type, or H = float with T sixteen float
// lanes in the CPU's 16-bit loops (cpu/lanes.h).
template <typename T, typename H>
FASTDYN_HD void adam_update(T& p, T g, T& m, T& v, T& vmax, bool amsgrad, const AdamHyper<H>& h,
                            const AdamStepScalars<H>& s) {
  g = s.coupled_decay != H(0) ? s.grad_sign * g + s.coupled_decay * p : s.grad_sign * g;
  p = p * s.param_decay;
  m = h.beta1 * m + h.one_minus_beta1 * g;
  v = h.beta2 * v + h.one_minus_beta2 * g * g;
  if (amsgrad) vmax = nan_max(vmax, v);
  const T denom = fsqrt(amsgrad ? vmax : v) / s.bias_correction2_sqrt + h.eps;
  p -= s.step_size * m / denom;
}

}  // namespace math
}  // namespace fastdyn
