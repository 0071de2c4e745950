// multi_tensor_norm on the CPU: one pass over every tensor, chunk-parallel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cpu/norm_kernels.h"

namespace fastdyn {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> multi_tensor_norm(at::TensorList tensors, double ord,
                                                     bool per_tensor,
                                                     const c10::optional<at::Tensor>& inv_scale) {
  check_norm_args(tensors, ord, inv_scale);
  // (read in double: a float64 inv_scale unrounded)
  const double inv = inv_scale.has_value() ? scalar_value(*inv_scale) : 1.0;
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  at::Tensor total = at::empty({}, opts);
  at::Tensor per = at::empty({per_tensor ? static_cast<int64_t>(tensors.size()) : 0}, opts);
  multi_tensor_norm_into(tensors, ord, total.data_ptr<float>(),
                         per_tensor ? per.data_ptr<float>() : nullptr,
                         inv_scale.has_value() ? &inv : nullptr);
  return {total, per};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm);
}

}  // namespace cpu
}  // namespace fastdyn
