// multi_tensor_scale_ on the CPU: t *= scale for every tensor, skipped when scale == 1.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/checks.h"
#include "fastdyn/cpu/scale_kernels.h"

namespace fastdyn {
namespace cpu {
namespace {

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& scale) {
  check_float_list("tensors", tensors, at::Device(at::kCPU));
  check_scalar_tensor("scale", scale, at::Device(at::kCPU));
  check_no_shared_memory({written_list("tensors", tensors), read_tensor("scale", scale)});
  scale_tensors_(tensors, scalar_value(scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
}

}  // namespace cpu
}  // namespace fastdyn
