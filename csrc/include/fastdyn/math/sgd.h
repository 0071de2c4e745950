// SGD direction and momentum, as torch.optim.SGD defines them; LARS reuses the momentum.
#pragma once
#include "fastdyn/macros.h"

namespace fastdyn {
namespace math {

template <typename T>
struct MomentumHyper {
  T momentum;
  T dampening;
  bool nesterov;
};

// Applies momentum to the direction d and returns the direction to step along.
// buf = d on the first step (no dampening), else momentum*buf + (1-dampening)*d.
template <typename T>
FASTDYN_HD T apply_momentum(T d, T& buf, const MomentumHyper<T>& h, bool first_step) {
  if (h.momentum == T(0)) return d;
  buf = first_step ? d : h.momentum * buf + (T(1) - h.dampening) * d;
  return h.nesterov ? d + h.momentum * buf : buf;
}

// torch.optim.SGD's direction before momentum: (+-)g + weight_decay * p.
template <typename T>
FASTDYN_HD T sgd_direction(T p, T g, T weight_decay, bool maximize) {
  if (maximize) g = -g;
  return weight_decay != T(0) ? g + weight_decay * p : g;
}

}  // namespace math
}  // namespace fastdyn
