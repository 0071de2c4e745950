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

// Momentum buffer after this step: d on the first step (no dampening), else
// momentum*buf + (1-dampening)*d. Callers apply momentum only when it is nonzero (a
// compile-time choice in the CPU loops: a runtime check here stopped GCC vectorizing them).
// (T the values, H the hyperparameters: as in adam.h.)
template <typename T, typename H>
FASTDYN_HD T momentum_buffer(T d, T buf, const MomentumHyper<H>& h, bool first_step) {
  return first_step ? d : h.momentum * buf + (H(1) - h.dampening) * d;
}

// Direction to step along, given the updated buffer: d + momentum*buf (Nesterov) or buf.
template <typename T, typename H>
FASTDYN_HD T momentum_direction(T d, T buf, const MomentumHyper<H>& h) {
  return h.nesterov ? d + h.momentum * buf : buf;
}

// torch.optim.SGD's direction before momentum: (+-)g + weight_decay * p, the p term left out
// at weight_decay 0 as torch does (0 * an inf p is NaN: the param and its buffer went NaN
// where torch's param stays inf). The branch is uniform: the loops stay vectorised.
template <typename T, typename H>
FASTDYN_HD T sgd_direction(T p, T g, H weight_decay, H grad_sign) {
  return weight_decay != H(0) ? grad_sign * g + weight_decay * p : grad_sign * g;
}

}  // namespace math
}  // namespace fastdyn
