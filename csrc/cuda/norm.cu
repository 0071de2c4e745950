// multi_tensor_norm on CUDA: chunk partials, per-tensor combine, total: 3 launches for up
// to hundreds of tensors of any dtypes, no host sync.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cuda/norm_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> multi_tensor_norm(at::TensorList tensors, double ord,
                                                     bool per_tensor,
                                                     const c10::optional<at::Tensor>& inv_scale) {
  const c10::optional<at::Device> checked = check_norm_args(tensors, ord, inv_scale);
  // (an empty list has no device: the dispatcher sends one here only with a CUDA inv_scale)
  TORCH_CHECK_VALUE(checked.has_value(), "tensors: an empty list has no CUDA device");
  const at::Device device = *checked;
  TORCH_CHECK_VALUE(device.is_cuda(), "tensors must be CUDA tensors here, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t n = static_cast<int64_t>(tensors.size());
  at::Tensor per = at::empty({per_tensor ? n : 0}, opts);
  if (n == 0) return {at::zeros({}, opts), per};
  at::Tensor total = at::empty({}, opts);
  at::Tensor partials = at::empty({n}, opts.dtype(at::kDouble));
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    if (inv_scale.has_value()) {
      per_tensor_partials<K, true>(tensors, partials.data_ptr<double>());
    } else {
      per_tensor_partials<K>(tensors, partials.data_ptr<double>());
    }
    launch_total<K>(partials.data_ptr<double>(), n, total.data_ptr<float>(),
                    per_tensor ? per.data_ptr<float>() : nullptr, nullptr, 0.f,
                    scalar_ref(inv_scale));
  });
  return {total, per};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm);
}

}  // namespace cuda
}  // namespace fastdyn
