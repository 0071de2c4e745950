// Per-element pieces of the norm, scale and unscale ops. Accumulation type A is float on
// the GPU and double on the CPU (free there: the loops are memory bound).
#pragma once
#include "fastdyn/macros.h"

namespace fastdyn {
namespace math {

enum class NormKind : int { L2 = 0, Inf = 1 };

// Accumulate one value into a norm partial: sum of squares for L2, NaN-propagating max of
// |x| for inf. Partials of either kind combine with norm_combine.
template <NormKind K, typename A>
FASTDYN_HD A norm_accumulate(A acc, A x) {
  if (K == NormKind::L2) {
    return fmadd(x, x, acc);
  } else {
    return nan_max(acc, fabs_(x));
  }
}

template <NormKind K, typename A>
FASTDYN_HD A norm_combine(A a, A b) {
  if (K == NormKind::L2) {
    return a + b;
  } else {
    return nan_max(a, b);
  }
}

// Turn a combined partial into the norm (sqrt of the sum of squares for L2).
template <NormKind K, typename A>
FASTDYN_HD A norm_finish(A partial) {
  if (K == NormKind::L2) {
    return fsqrt(partial);
  } else {
    return partial;
  }
}

// torch.nn.utils.clip_grad_norm_'s rule: coef = min(max_norm / (total + 1e-6), 1).
// A NaN total gives a NaN coefficient, so NaN reaches the gradients instead of being hidden.
template <typename A>
FASTDYN_HD A clip_coefficient(A total_norm, A max_norm) {
  A coef = max_norm / (total_norm + A(1e-6));
  return coef < A(1) || coef != coef ? coef : A(1);
}

}  // namespace math
}  // namespace fastdyn
