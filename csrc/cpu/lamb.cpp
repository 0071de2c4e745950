// Fused LAMB on the CPU. Phase A updates the moments and accumulates ||p||^2 and ||u||^2
// per chunk; the trust ratio of each tensor follows; phase B recomputes u from the stored
// moments and applies it. Batches of tensors (cpu::two_phase) keep phase B's reads in cache.
// Global gradient clipping arrives folded into grad_scale (the optimizer computes it).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/lamb.h"

namespace fastdyn {
namespace cpu {
namespace {

// L: A for one element, Lanes16 for sixteen (16-bit arrays; lanes.h).
template <typename P, typename S, bool kMaster>
void lamb_moments_chunk(const P* __restrict__ p, const P* __restrict__ g, S* __restrict__ m,
                        S* __restrict__ v, const float* __restrict__ master, int64_t n,
                        const math::LambHyper<typename OpMath<P>::type> h,
                        const math::LambStepScalars<typename OpMath<P>::type> s,
                        typename OpMath<P>::type inv_scale, StatsPartial* out) {
  using A = typename OpMath<P>::type;
  *out = lane_sums<A, WideLanes<P, S>>(n, [&]<typename L>(int64_t i, L& g2, L& p2, L& u2) {
    const L pv = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    const L gv = load_lanes<L>(g + i) * inv_scale;
    L mv = load_lanes<L>(m + i);
    L vv = load_lanes<L>(v + i);
    math::lamb_moments(gv, mv, vv, h);
    store_lanes(m + i, mv);
    store_lanes(v + i, vv);
    // u from the stored (rounded) moments, read back: phase B recomputes exactly this value.
    // (Rounding through a local c10::BFloat16/Half left the 16-bit loops scalar: GCC sees a
    // struct copy; bf16 LAMB ran at 0.15 G elem/s.)
    const L u = math::lamb_direction(pv, load_lanes<L>(m + i), load_lanes<L>(v + i), h, s);
    g2 = gv * gv;
    p2 = pv * pv;
    u2 = u * u;
  });
}

template <typename P, typename S, bool kMaster>
void lamb_apply_chunk(P* __restrict__ p, const S* __restrict__ m, const S* __restrict__ v,
                      float* __restrict__ master, int64_t n,
                      const math::LambHyper<typename OpMath<P>::type> h,
                      const math::LambStepScalars<typename OpMath<P>::type> s,
                      typename OpMath<P>::type step) {
  using A = typename OpMath<P>::type;
  auto apply = [&]<typename L>(int64_t i, L&, L&, L&) {
    const L pv = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    const L out = pv - step * math::lamb_direction(pv, load_lanes<L>(m + i), load_lanes<L>(v + i), h, s);
    if constexpr (kMaster) store_lanes(master + i, out);
    store_lanes(p + i, out);
  };
  for_elements<false, A, WideLanes<P, S>>(n, apply, nullptr);
}

void lamb_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList master_params, at::TensorList state_steps,
           const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
           bool bias_correction, bool grad_averaging, bool trust_clip, bool always_adapt,
           const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
           const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                          state_steps, lr, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step(state_steps, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const bool adapt = weight_decay != 0.0 || always_adapt;
  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(plan.chunks.size());
  std::vector<double> ratios(params.size(), 1.0);

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const math::LambHyper<A> h{A(beta1), A(beta2), grad_averaging ? A(1) - A(beta1) : A(1),
                               A(eps), A(weight_decay)};
    auto scalars = [&](int64_t t) {
      return math::lamb_step_scalars<A>(h, A(scalar_value(state_steps[t])), bias_correction);
    };
    auto moments = [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      const auto s = scalars(t);
      if (grp.has_master) {
        lamb_moments_chunk<P, S, true>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
                                       list_ptr<S>(exp_avgs, t, b), list_ptr<S>(exp_avg_sqs, t, b),
                                       list_ptr<float>(master_params, t, b), c.end - b, h, s,
                                       A(ctx.inv_grad_scale), &partials[ci]);
      } else {
        lamb_moments_chunk<P, S, false>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
                                        list_ptr<S>(exp_avgs, t, b), list_ptr<S>(exp_avg_sqs, t, b),
                                        nullptr, c.end - b, h, s, A(ctx.inv_grad_scale),
                                        &partials[ci]);
      }
    };
    auto finish = [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        double p2 = 0, u2 = 0;
        for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) {
          p2 += partials[c][1];
          u2 += partials[c][2];
        }
        ratios[t] = math::lamb_trust_ratio(math::fsqrt(p2), math::fsqrt(u2), adapt, trust_clip);
      }
    };
    auto apply = [&](const Chunk& c, int64_t) {
      const int64_t t = c.tensor, b = c.begin;
      const auto s = scalars(t);
      const A step = A(ctx.lr * ratios[t]);
      if (grp.has_master) {
        lamb_apply_chunk<P, S, true>(list_ptr<P>(params, t, b), list_ptr<const S>(exp_avgs, t, b),
                                     list_ptr<const S>(exp_avg_sqs, t, b),
                                     list_ptr<float>(master_params, t, b), c.end - b, h, s, step);
      } else {
        lamb_apply_chunk<P, S, false>(list_ptr<P>(params, t, b), list_ptr<const S>(exp_avgs, t, b),
                                      list_ptr<const S>(exp_avg_sqs, t, b), nullptr, c.end - b, h,
                                      s, step);
      }
    };
    two_phase(plan, moments, finish, apply);
  });
  if (stats.has_value()) {
    // ||update|| = lr * r * ||u||, from the ||u||^2 partials phase A already has.
    std::vector<double> update_norms(params.size());
    for (int64_t t = 0; t < grp.size; ++t) {
      double u2 = 0;
      for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) u2 += partials[c][2];
      update_norms[t] = ctx.lr * ratios[t] * math::fsqrt(u2);
    }
    write_stats(*stats, plan, partials, ratios, update_norms);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("lamb_", &lamb_);
}

}  // namespace cpu
}  // namespace fastdyn
