// Adam / AdamW per-element update, shared by the CPU and CUDA kernels. Same order of
// operations as torch's fused Adam (aten/src/ATen/native/cuda/fused_adam_utils.cuh), so
// results agree with torch.optim.Adam to rounding.
#pragma once
#include "fastdyn/macros.h"

namespace fastdyn {
namespace math {

template <typename T>
struct AdamHyper {
  T beta1;
  T beta2;
  T eps;
  T weight_decay;
  bool amsgrad;
  bool maximize;
  bool decoupled_weight_decay;  // AdamW
};

// Values that depend on the step count, computed once per tensor (not per element).
template <typename T>
struct AdamStepScalars {
  T lr;
  T step_size;        // lr / (1 - beta1^t)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t)
};

template <typename T>
FASTDYN_HD AdamStepScalars<T> adam_step_scalars(const AdamHyper<T>& h, T lr, T step) {
  AdamStepScalars<T> s;
  s.lr = lr;
  s.step_size = lr / (T(1) - fpow(h.beta1, step));
  s.bias_correction2_sqrt = fsqrt(T(1) - fpow(h.beta2, step));
  return s;
}

// p, m, v, vmax are updated in place; g is the (already unscaled) gradient.
template <typename T>
FASTDYN_HD void adam_update(T& p, T g, T& m, T& v, T& vmax, const AdamHyper<T>& h,
                            const AdamStepScalars<T>& s) {
  if (h.maximize) g = -g;
  if (h.weight_decay != T(0)) {
    if (h.decoupled_weight_decay) {
      p -= s.lr * h.weight_decay * p;
    } else {
      g += h.weight_decay * p;
    }
  }
  m = h.beta1 * m + (T(1) - h.beta1) * g;
  v = h.beta2 * v + (T(1) - h.beta2) * g * g;
  T second = v;
  if (h.amsgrad) {
    vmax = nan_max(vmax, v);
    second = vmax;
  }
  const T denom = fsqrt(second) / s.bias_correction2_sqrt + h.eps;
  p -= s.step_size * m / denom;
}

}  // namespace math
}  // namespace fastdyn
