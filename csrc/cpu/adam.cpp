// Fused Adam/AdamW on the CPU: one pass reads p, g, m, v (and vmax) and writes p, m, v.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/adam.h"

namespace fastdyn {
namespace cpu {
namespace {

// L is the lane type the loop hands in: A for one element, Lanes16 for sixteen (16-bit
// arrays; lanes.h).
template <typename P, typename S, bool kMaster, bool kStats, bool kAmsgrad>
void adam_chunk(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ m,
                S* __restrict__ v, S* __restrict__ vmax, float* __restrict__ master, int64_t n,
                const math::AdamHyper<typename OpMath<P>::type> h,
                const math::AdamStepScalars<typename OpMath<P>::type> s,
                typename OpMath<P>::type inv_scale, StatsPartial* stats) {
  using A = typename OpMath<P>::type;
  auto update = [&]<typename L>(int64_t i, L& norm_g, L& norm_p, L& norm_change) {
    L pv = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    const L gv = load_lanes<L>(g + i) * inv_scale;
    L mv = load_lanes<L>(m + i);
    L vv = load_lanes<L>(v + i);
    L vm = kAmsgrad ? load_lanes<L>(vmax + i) : L(A(0));
    const L p_old = pv;
    math::adam_update(pv, gv, mv, vv, vm, kAmsgrad, h, s);
    if constexpr (kMaster) store_lanes(master + i, pv);
    store_lanes(p + i, pv);
    store_lanes(m + i, mv);
    store_lanes(v + i, vv);
    if constexpr (kAmsgrad) store_lanes(vmax + i, vm);
    norm_g = gv;
    norm_p = p_old;
    const L change = held_after<P, kMaster>(pv, p, i) - p_old;
    norm_change = change;
  };
  for_elements<kStats, A, WideLanes<P, S>>(n, update, stats);
}

void adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
           at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
           const at::Tensor& beta1, double beta2, const at::Tensor& weight_decay, double eps,
           bool amsgrad,
           bool maximize, bool decoupled_weight_decay,
           const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                          master_params, state_steps, lr, beta1, weight_decay,
                                          amsgrad, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step(state_steps, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(stats.has_value() ? plan.chunks.size() : 0);
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const auto h = math::adam_hyper<A>(scalar_value(beta1), beta2, eps, scalar_value(weight_decay),
                                       amsgrad, maximize, decoupled_weight_decay);
    const auto scalars = per_tensor_of_step(
        state_steps, [&](double step) { return math::adam_step_scalars<A>(h, ctx.lr, step); });
    for_each_chunk(plan, [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      const auto& s = scalars[t];
      auto run = [&](auto master_c, auto stats_c) {
        auto kernel = amsgrad ? adam_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, true>
                              : adam_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, false>;
        kernel(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
               list_ptr<S>(exp_avgs, t, b), list_ptr<S>(exp_avg_sqs, t, b),
               amsgrad ? list_ptr<S>(max_exp_avg_sqs, t, b) : nullptr,
               list_ptr<float>(master_params, t, b), c.end - b, h, s, A(ctx.inv_grad_scale),
               partials.empty() ? nullptr : &partials[ci]);
      };
      dispatch_flags(grp.has_master, !partials.empty(), run);
    });
  });
  if (stats.has_value()) write_stats(*stats, plan, partials, {});
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("adam_", &adam_);
}

}  // namespace cpu
}  // namespace fastdyn
