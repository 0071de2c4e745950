// multi_tensor_unscale_norm_ on CUDA: one read and one write of the gradients give the
// unscaled gradients, found_inf and the norms.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cuda/norm_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> multi_tensor_unscale_norm_(at::TensorList tensors,
                                                              const at::Tensor& inv_scale,
                                                              const at::Tensor& found_inf,
                                                              double ord, bool per_tensor) {
  const at::Device device = check_unscale_norm_args(tensors, inv_scale, found_inf, ord);
  const c10::cuda::CUDAGuard guard(device);
  const auto opts = found_inf.options().dtype(at::kFloat);
  const int64_t n = static_cast<int64_t>(tensors.size());
  if (n == 0) return {at::zeros({}, opts), at::empty({0}, opts)};
  at::Tensor partials = at::empty({n}, opts.dtype(at::kDouble));
  at::Tensor total = at::empty({}, opts);
  at::Tensor per = at::empty({per_tensor ? n : 0}, opts);
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    per_tensor_partials<K>(tensors, partials.data_ptr<double>(), scalar_ref(inv_scale),
                           found_inf.data_ptr<float>());
    launch_total<K>(partials.data_ptr<double>(), n, total.data_ptr<float>(),
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
