// multi_tensor_scale_ on the CPU: t *= scale for every tensor, skipped when scale == 1.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cpu/scale_kernels.h"

namespace fastdyn {
namespace cpu {
namespace {

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& scale) {
  check_scale_args(tensors, scale);
  scale_tensors_(tensors, scalar_value(scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
}

}  // namespace cpu
}  // namespace fastdyn
