// Fused SGD on CUDA: one pass over p, g (and the momentum buffer).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cuda/momentum_update.cuh"
#include "fastdyn/cuda/update_common.cuh"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cuda {
namespace {

// d = sign * g + weight_decay * p, the same for every tensor (sign -1 with maximize; chosen
// in the kernel, as before the op was shared with LARS). weight_decay is read on the device.
template <typename A>
struct SgdDirection {
  ScalarRef weight_decay;
  bool maximize;
  __device__ __forceinline__ auto for_tensor(int) const {
    const A wd = static_cast<A>(weight_decay.get()), grad_sign = maximize ? A(-1) : A(1);
    return [wd, grad_sign](A pv, A gv) { return math::sgd_direction(pv, gv, wd, grad_sign); };
  }
};

void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
          at::TensorList master_params, const at::Tensor& lr, const at::Tensor& momentum,
          double dampening, const at::Tensor& weight_decay, bool nesterov, bool maximize,
          bool is_first_step,
          const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
          const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, weight_decay, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  const bool want_stats = stats.has_value();
  at::Tensor partials;
  if (want_stats) partials = at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, lr.options().dtype(at::kDouble));
  double* partials_ptr = want_stats ? partials.data_ptr<double>() : nullptr;
  const std::array<at::TensorList, kMomentumDepth> lists = {
      params, grads, momentum_buffers, master_params};

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    dispatch_flags(grp.has_master, want_stats, [&](auto master_c, auto stats_c) {
      const auto update = make_momentum_update<P, S, decltype(master_c)::value, decltype(stats_c)::value>(
          SgdDirection<A>{scalar_ref(weight_decay), maximize}, found, momentum, !momentum_buffers.empty(),
          dampening, nesterov, is_first_step, lr, grad_scale, partials_ptr);
      for_each_batch<kMomentumDepth>(lists, [&](const TensorListMeta<kMomentumDepth>& meta) {
        launch_apply(meta, update);
        if (want_stats) launch_stats(meta, partials_ptr, nullptr, nullptr, stats->data_ptr<float>(), found);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("sgd_", &sgd_);
}

}  // namespace cuda
}  // namespace fastdyn
