// Fused SGD (momentum, dampening, nesterov, weight decay, maximize) on the CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/momentum_update.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cpu {
namespace {

void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
          at::TensorList master_params, const at::Tensor& lr, const at::Tensor& momentum,
          double dampening, const at::Tensor& weight_decay, bool nesterov, bool maximize, bool is_first_step,
          const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
          const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, weight_decay, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step({}, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(stats.has_value() ? plan.chunks.size() : 0);
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    // no buffers: no momentum, and its tensor is not read
    const bool has_momentum = !momentum_buffers.empty();
    const math::MomentumHyper<A> mh{A(has_momentum ? scalar_value(momentum) : 0.0), A(dampening),
                                    nesterov};
    const A wd = A(scalar_value(weight_decay)), grad_sign = maximize ? A(-1) : A(1);
    auto direction = [=](auto p, auto g) { return math::sgd_direction(p, g, wd, grad_sign); };
    for_each_chunk(plan, [&](const Chunk& c, int64_t ci) {
      momentum_update<P, S>(params, grads, momentum_buffers, master_params, c, grp.has_master,
                            has_momentum, A(ctx.lr), A(ctx.inv_grad_scale), mh, is_first_step,
                            direction, partials.empty() ? nullptr : &partials[ci]);
    });
  });
  if (stats.has_value()) write_stats(*stats, plan, partials, {});
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("sgd_", &sgd_);
}

}  // namespace cpu
}  // namespace fastdyn
