// Fused Adam/AdamW on the CPU: one pass reads p, g, m, v (and vmax) and writes p, m, v.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/stage16.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/adam.h"

namespace fastdyn {
namespace cpu {
namespace {

template <typename P, typename S, bool kMaster, bool kStats, bool kAmsgrad>
void adam_chunk(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ m,
                S* __restrict__ v, S* __restrict__ vmax, float* __restrict__ master, int64_t n,
                const math::AdamHyper<typename OpMath<P>::type> h,
                const math::AdamStepScalars<typename OpMath<P>::type> s,
                typename OpMath<P>::type inv_scale, StatsPartial* stats) {
  using A = typename OpMath<P>::type;
  auto update = [&](int64_t i, A& g2, A& p2, A& d2) {
    A pv = kMaster ? static_cast<A>(master[i]) : load<A>(p[i]);
    const A gv = load<A>(g[i]) * inv_scale;
    A mv = load<A>(m[i]);
    A vv = load<A>(v[i]);
    A vm = kAmsgrad ? load<A>(vmax[i]) : A(0);
    const A p_old = pv;
    math::adam_update(pv, gv, mv, vv, vm, kAmsgrad, h, s);
    if (kMaster) master[i] = static_cast<float>(pv);
    p[i] = store<P>(pv);
    m[i] = store<S>(mv);
    v[i] = store<S>(vv);
    if (kAmsgrad) vmax[i] = store<S>(vm);
    g2 = gv * gv;
    p2 = p_old * p_old;
    d2 = (pv - p_old) * (pv - p_old);
  };
  for_elements<kStats, A>(n, update, stats);
}

void adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
           at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
           double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
           bool maximize, bool decoupled_weight_decay,
           const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                          master_params, state_steps, lr, amsgrad, grad_scale,
                                          found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step(state_steps, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(stats.has_value() ? plan.chunks.size() : 0);
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const math::AdamHyper<A> h{A(beta1), A(beta2), A(eps), A(weight_decay), amsgrad, maximize,
                               decoupled_weight_decay};
    for_each_chunk(plan, [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      const auto s = math::adam_step_scalars<A>(h, A(ctx.lr), A(scalar_value(state_steps[t])));
      auto run = [&](auto master_c, auto stats_c) {
        auto kernel = amsgrad ? adam_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, true>
                              : adam_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, false>;
        P* p = list_ptr<P>(params, t, b);
        const P* g = list_ptr<const P>(grads, t, b);
        S* m = list_ptr<S>(exp_avgs, t, b);
        S* v = list_ptr<S>(exp_avg_sqs, t, b);
        S* vmax = amsgrad ? list_ptr<S>(max_exp_avg_sqs, t, b) : nullptr;
        float* master = list_ptr<float>(master_params, t, b);
        StatsPartial* chunk_stats = partials.empty() ? nullptr : &partials[ci];
        if constexpr (kStaged<P> || kStaged<S>) {
          // fp32 blocks (stage16.h); the same kernel on them, the same bits
          constexpr bool kMaster = decltype(master_c)::value, kStats = decltype(stats_c)::value;
          auto kernel32 = amsgrad ? adam_chunk<float, float, kMaster, kStats, true>
                                  : adam_chunk<float, float, kMaster, kStats, false>;
          float p_s[kStageElems], g_s[kStageElems], m_s[kStageElems], v_s[kStageElems],
              vmax_s[kStageElems];
          for_stage_blocks(c.end - b, chunk_stats, [&](int64_t o, int64_t len, StatsPartial* block_stats) {
            float* pf = staged(p, p_s, o, len, !kMaster);
            float* mf = staged(m, m_s, o, len, true);
            float* vf = staged(v, v_s, o, len, true);
            float* vmaxf = staged(vmax, vmax_s, o, len, true);
            kernel32(pf, staged(g, g_s, o, len, true), mf, vf, vmaxf, master ? master + o : nullptr,
                     len, h, s, A(ctx.inv_grad_scale), block_stats);
            unstage(pf, p, o, len);
            unstage(mf, m, o, len);
            unstage(vf, v, o, len);
            unstage(vmaxf, vmax, o, len);
          });
        } else {
          kernel(p, g, m, v, vmax, master, c.end - b, h, s, A(ctx.inv_grad_scale), chunk_stats);
        }
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
