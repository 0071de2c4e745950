// multi_tensor_unscale_norm_ on CUDA: one read and one write of the gradients give the
// unscaled gradients, found_inf and the norms.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/checks.h"
#include "fastdyn/cuda/norm_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> multi_tensor_unscale_norm_(at::TensorList tensors,
                                                              const at::Tensor& inv_scale,
                                                              const at::Tensor& found_inf,
                                                              double ord, bool per_tensor) {
  check_norm_ord(ord);
  const at::Device device = *check_float_list("tensors", tensors);
  check_scalar_tensor("inv_scale", inv_scale, device);
  check_scalar_tensor("found_inf", found_inf, device);
  TORCH_CHECK_TYPE(found_inf.scalar_type() == at::kFloat, "found_inf must be float32 (as GradScaler's), got ",
                   found_inf.scalar_type());
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor inv = inv_scale.to(at::kFloat);
  const auto opts = tensors[0].options().dtype(at::kFloat);
  const int64_t n = static_cast<int64_t>(tensors.size());
  at::Tensor partials = at::empty({n}, opts);
  at::Tensor total = at::empty({}, opts);
  at::Tensor per = at::empty({per_tensor ? n : 0}, opts);
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    per_tensor_partials<K>(tensors, partials.data_ptr<float>(), inv.data_ptr<float>(),
                           found_inf.data_ptr<float>());
    launch_total<K>(partials.data_ptr<float>(), n, total.data_ptr<float>(),
                    per_tensor ? per.data_ptr<float>() : nullptr);
  });
  return {total, per};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("multi_tensor_unscale_norm_", &multi_tensor_unscale_norm_);
}

}  // namespace cuda
}  // namespace fastdyn
