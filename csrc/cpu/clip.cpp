// clip_grad_norm_ on the CPU: the norm pass, torch's clipping rule, then the scaling pass
// only when the coefficient is below 1.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cpu/norm_kernels.h"
#include "fastdyn/cpu/scale_kernels.h"

namespace fastdyn {
namespace cpu {
namespace {

at::Tensor clip_grad_norm_(at::TensorList grads, double max_norm, double ord) {
  check_clip_args(grads, ord);
  float total = 0.f;
  multi_tensor_norm_into(grads, ord, &total, nullptr);
  const float coef = math::clip_coefficient(total, static_cast<float>(max_norm));
  scale_tensors_(grads, coef);
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("clip_grad_norm_", &clip_grad_norm_);
}

}  // namespace cpu
}  // namespace fastdyn
