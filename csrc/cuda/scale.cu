// multi_tensor_scale_ on CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/checks.h"
#include "fastdyn/cuda/scale_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& scale) {
  const auto device = check_float_list("tensors", tensors);
  if (!device.has_value()) return;
  check_scalar_tensor("scale", scale, *device);
  check_no_shared_memory({written_list("tensors", tensors), read_tensor("scale", scale)});
  const c10::cuda::CUDAGuard guard(*device);
  scale_tensors_(tensors, scalar_ref(scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
}

}  // namespace cuda
}  // namespace fastdyn
