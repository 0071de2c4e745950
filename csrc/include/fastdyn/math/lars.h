// LARS trust ratio and direction (DESIGN.md contract); the momentum is SGD's.
#pragma once
#include "fastdyn/macros.h"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace math {

// r = trust_coeff*||p|| / (||g|| + wd*||p|| + eps), 1 where ||p|| or ||g|| is 0;
// with trust_clip min(r / lr, 1) (applied after the zero-norm rule, as timm's lars.py).
template <typename T>
FASTDYN_HD T lars_trust_ratio(T param_norm, T grad_norm, T trust_coeff, T weight_decay, T eps,
                              T lr, bool adapt, bool trust_clip) {
  if (!adapt) return T(1);
  T r = (param_norm > T(0) && grad_norm > T(0))
            ? trust_coeff * param_norm / (grad_norm + weight_decay * param_norm + eps)
            : T(1);
  if (trust_clip) {
    r = r / lr;
    r = r > T(1) ? T(1) : r;  // (a NaN ratio stays NaN: `r < 1 ? r : 1` made it 1)
  }
  return r;
}

// d = (g + wd*p) * r when adapting, else g (weight decay only enters through adaptation);
// no p term at wd 0 (always_adapt), where 0 * an inf p would be NaN.
template <typename T, typename H>
FASTDYN_HD T lars_direction(T p, T g, H weight_decay, H trust_ratio, bool adapt) {
  if (!adapt) return g;
  return (weight_decay != H(0) ? g + weight_decay * p : g) * trust_ratio;
}

}  // namespace math
}  // namespace fastdyn
