// Fused LARS on the CPU: per-tensor ||p||, ||g|| then the trust-scaled SGD-momentum update,
// batch by batch so the update pass finds p and g still in cache (cpu::two_phase).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/momentum_update.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/lars.h"

namespace fastdyn {
namespace cpu {
namespace {

template <typename P, bool kMaster>
void lars_norms(const P* __restrict__ p, const P* __restrict__ g,
                const float* __restrict__ master, int64_t n, double inv_scale, StatsPartial* out) {
  using A = typename OpMath<P>::type;
  const auto sums = lane_sums<A, WideLanes<P>>(n, [&]<typename L>(int64_t i, L& norm_p, L& unused_b, L& unused_c) {
    norm_p = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    unused_b = unused_c = L(A(0));
  });
  // g is squared as given (scaled) and in double, then unscaled: see sum_squares_double
  *out = {sum_squares_double(g, n) * inv_scale * inv_scale, sums[0], 0.0};
}

void lars_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
           at::TensorList master_params, const at::Tensor& lr, const at::Tensor& momentum,
           double dampening, const at::Tensor& weight_decay, bool nesterov, double trust_coeff,
           double eps,
           bool trust_clip, bool always_adapt, bool is_first_step,
           const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats,
           const c10::optional<at::Tensor>& trust_ratios) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, weight_decay, grad_scale, found_inf, stats,
                                              trust_ratios);
  if (trust_ratios.has_value()) check_trust_ratios(*trust_ratios, grp);
  if (params.empty()) return;
  const StepContext ctx = begin_step({}, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const double wd_value = scalar_value(weight_decay);  // (a CPU tensor)
  const bool adapt = wd_value != 0.0 || always_adapt;
  const bool want_stats = stats.has_value();
  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(plan.chunks.size(), StatsPartial{0.0, 0.0, 0.0});
  std::vector<double> ratios(params.size(), 1.0);
  // the caller's ratios (norms all-reduced over shards): no norm pass; without adaptation
  // r = 1 whatever they say, as in the reference
  const bool given_ratios = trust_ratios.has_value() && adapt;
  if (given_ratios) {
    const at::Tensor r = trust_ratios->to(at::kDouble).contiguous();
    ratios.assign(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
  }

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    // no buffers: no momentum, and its tensor is not read
    const bool has_momentum = !momentum_buffers.empty();
    const math::MomentumHyper<A> mh{A(has_momentum ? scalar_value(momentum) : 0.0), A(dampening),
                                    nesterov};
    auto norms = [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      if (grp.has_master) {
        lars_norms<P, true>(list_ptr<const P>(params, t, b), list_ptr<const P>(grads, t, b),
                                  list_ptr<const float>(master_params, t, b), c.end - b,
                                  ctx.inv_grad_scale, &partials[ci]);
      } else {
        lars_norms<P, false>(list_ptr<const P>(params, t, b), list_ptr<const P>(grads, t, b),
                                   nullptr, c.end - b, ctx.inv_grad_scale, &partials[ci]);
      }
    };
    auto finish = [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        double g2 = 0, p2 = 0;
        for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) {
          g2 += partials[c][0];
          p2 += partials[c][1];
        }
        ratios[t] = math::lars_trust_ratio(math::fsqrt(p2), math::fsqrt(g2), trust_coeff,
                                           wd_value, eps, ctx.lr, adapt, trust_clip);
      }
    };
    auto update = [&](const Chunk& c, int64_t ci) {
      const A wd = A(wd_value), ratio = A(ratios[c.tensor]);
      // adapt as a compile-time constant: one more runtime select in the loop (beside
      // first_step and nesterov) left the track_stats loop scalar (0.4 G elem/s in cache).
      auto run = [&](auto adapt_c) {
        momentum_update<P, S>(
            params, grads, momentum_buffers, master_params, c, grp.has_master, has_momentum,
            A(ctx.lr), A(ctx.inv_grad_scale), mh, is_first_step,
            [=](auto p, auto g) { return math::lars_direction(p, g, wd, ratio, decltype(adapt_c)::value); },
            want_stats ? &partials[ci] : nullptr);
      };
      adapt ? run(std::true_type{}) : run(std::false_type{});
    };
    if (adapt && !given_ratios) {
      two_phase(plan, norms, finish, update);
    } else {
      // r = 1, or the caller's ratios: one pass (the statistics come from it too).
      for_each_chunk(plan, update);
    }
  });
  if (want_stats) write_stats(*stats, plan, partials, ratios);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("lars_", &lars_);
}

}  // namespace cpu
}  // namespace fastdyn
