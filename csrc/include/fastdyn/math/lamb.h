// LAMB per-element math (DESIGN.md contract, steps 2-5). The update is computed twice per
// element (once for ||u||, once to apply it) from the stored moments, so both passes see
// the same u bit for bit.
#pragma once
#include "fastdyn/macros.h"

namespace fastdyn {
namespace math {

template <typename T>
struct LambHyper {
  T beta1;
  T beta2;
  T grad_coef;  // 1 - beta1 with grad_averaging, else 1
  T eps;
  T weight_decay;
};

// Bias corrections 1 - beta^t, or 1 when bias_correction is off.
template <typename T>
struct LambStepScalars {
  T bias_correction1;
  T bias_correction2;
};

template <typename T>
FASTDYN_HD LambStepScalars<T> lamb_step_scalars(const LambHyper<T>& h, T step,
                                                bool bias_correction) {
  LambStepScalars<T> s;
  s.bias_correction1 = bias_correction ? T(1) - fpow(h.beta1, step) : T(1);
  s.bias_correction2 = bias_correction ? T(1) - fpow(h.beta2, step) : T(1);
  return s;
}

template <typename T>
FASTDYN_HD void lamb_moments(T g, T& m, T& v, const LambHyper<T>& h) {
  m = h.beta1 * m + h.grad_coef * g;
  v = h.beta2 * v + (T(1) - h.beta2) * g * g;
}

// u = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * p
template <typename T>
FASTDYN_HD T lamb_direction(T p, T m, T v, const LambHyper<T>& h, const LambStepScalars<T>& s) {
  const T u = (m / s.bias_correction1) / (fsqrt(v / s.bias_correction2) + h.eps);
  return h.weight_decay != T(0) ? u + h.weight_decay * p : u;
}

// r = ||p|| / ||u|| when both are > 0, else 1; min(r, 1) with trust_clip; 1 unless adapting.
template <typename T>
FASTDYN_HD T lamb_trust_ratio(T param_norm, T update_norm, bool adapt, bool trust_clip) {
  if (!adapt) return T(1);
  T r = (param_norm > T(0) && update_norm > T(0)) ? param_norm / update_norm : T(1);
  return (trust_clip && r > T(1)) ? T(1) : r;
}

}  // namespace math
}  // namespace fastdyn
