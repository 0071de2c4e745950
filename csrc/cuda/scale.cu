// multi_tensor_scale_ on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cuda/scale_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& scale) {
  const auto device = check_scale_args(tensors, scale);
  if (!device.has_value()) return;
  const c10::cuda::CUDAGuard guard(*device);
  scale_tensors_(tensors, scalar_ref(scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
}

}  // namespace cuda
}  // namespace fastdyn
