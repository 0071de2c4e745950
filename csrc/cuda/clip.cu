// clip_grad_norm_ on CUDA: norm partials, the total and torch's clipping coefficient in
// one small kernel, then the scaling launch, whose blocks stop at once when the
// coefficient is 1. No host sync anywhere.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cuda/norm_kernels.cuh"
#include "fastdyn/cuda/scale_kernels.cuh"

namespace fastdyn {
namespace cuda {
namespace {

at::Tensor clip_grad_norm_(at::TensorList grads, double max_norm, double ord) {
  const c10::optional<at::Device> checked = check_clip_args(grads, ord);
  // (an empty list has no device: the dispatcher never sends one here)
  TORCH_CHECK_VALUE(checked.has_value(), "grads: an empty list has no CUDA device");
  const at::Device device = *checked;
  const c10::cuda::CUDAGuard guard(device);
  const auto opts = grads[0].options().dtype(at::kFloat);
  const int64_t n = static_cast<int64_t>(grads.size());
  at::Tensor partials = at::empty({n}, opts.dtype(at::kDouble));
  at::Tensor total = at::empty({}, opts);
  at::Tensor coef = at::empty({}, opts);
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    per_tensor_partials<K>(grads, partials.data_ptr<double>());
    launch_total<K>(partials.data_ptr<double>(), n, total.data_ptr<float>(), nullptr,
                    coef.data_ptr<float>(), static_cast<float>(max_norm));
  });
  scale_tensors_(grads, scalar_ref(coef));
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("clip_grad_norm_", &clip_grad_norm_);
}

}  // namespace cuda
}  // namespace fastdyn
