// Fused LARS on the CPU: per-tensor ||p||, ||g|| then the trust-scaled SGD-momentum update,
// batch by batch so the update pass finds p and g still in cache (cpu::two_phase).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/lars.h"

namespace fastdyn {
namespace cpu {
namespace {

template <typename P, bool kMaster>
void lars_norms_chunk(const P* __restrict__ p, const P* __restrict__ g,
                      const float* __restrict__ master, int64_t n, double inv_scale,
                      StatsPartial* out) {
  double g2 = 0, p2 = 0;
#pragma omp simd reduction(+ : g2, p2)
  for (int64_t i = 0; i < n; ++i) {
    const double pv = kMaster ? double(master[i]) : static_cast<double>(load<typename OpMath<P>::type>(p[i]));
    const double gv = static_cast<double>(load<typename OpMath<P>::type>(g[i]));
    g2 += gv * gv;
    p2 += pv * pv;
  }
  *out = {g2 * inv_scale * inv_scale, p2, 0.0};
}

template <typename P, typename S, bool kMaster, bool kStats, bool kMomentum>
void lars_update_chunk(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ buf,
                       float* __restrict__ master, int64_t n, typename OpMath<P>::type lr,
                       typename OpMath<P>::type weight_decay, typename OpMath<P>::type trust_ratio,
                       bool adapt, const math::MomentumHyper<typename OpMath<P>::type> mh,
                       bool first_step, typename OpMath<P>::type inv_scale, double* update_sq) {
  using A = typename OpMath<P>::type;
  double d2 = 0;
#pragma omp simd reduction(+ : d2)
  for (int64_t i = 0; i < n; ++i) {
    const A p_old = kMaster ? static_cast<A>(master[i]) : load<A>(p[i]);
    const A gv = load<A>(g[i]) * inv_scale;
    A d = math::lars_direction(p_old, gv, weight_decay, trust_ratio, adapt);
    if (kMomentum) {
      const A bv = math::momentum_buffer(d, load<A>(buf[i]), mh, first_step);
      buf[i] = store<S>(bv);
      d = math::momentum_direction(d, bv, mh);
    }
    const A pv = p_old - lr * d;
    if (kMaster) master[i] = static_cast<float>(pv);
    p[i] = store<P>(pv);
    if (kStats) d2 += double(pv - p_old) * double(pv - p_old);
  }
  if (kStats) *update_sq = d2;
}

void lars_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
           at::TensorList master_params, const at::Tensor& lr, double momentum, double dampening,
           double weight_decay, bool nesterov, double trust_coeff, double eps, bool trust_clip,
           bool always_adapt, bool is_first_step, const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step({}, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const bool adapt = weight_decay != 0.0 || always_adapt;
  const bool want_stats = stats.has_value();
  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(plan.chunks.size(), StatsPartial{0.0, 0.0, 0.0});
  std::vector<double> ratios(params.size(), 1.0);

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const math::MomentumHyper<A> mh{A(momentum), A(dampening), nesterov};
    auto norms = [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      if (grp.has_master) {
        lars_norms_chunk<P, true>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
                                  list_ptr<float>(master_params, t, b), c.end - b,
                                  ctx.inv_grad_scale, &partials[ci]);
      } else {
        lars_norms_chunk<P, false>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
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
                                           weight_decay, eps, ctx.lr, adapt, trust_clip);
      }
    };
    auto update = [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      S* buf = momentum != 0.0 ? list_ptr<S>(momentum_buffers, t, b) : nullptr;
      auto run = [&](auto master_c, auto stats_c) {
        auto kernel = buf ? lars_update_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, true>
                          : lars_update_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, false>;
        kernel(
            list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b), buf,
            list_ptr<float>(master_params, t, b), c.end - b, A(ctx.lr), A(weight_decay),
            A(ratios[t]), adapt, mh, is_first_step, A(ctx.inv_grad_scale), &partials[ci][2]);
      };
      dispatch_flags(grp.has_master, want_stats, run);
    };
    if (adapt || want_stats) {
      two_phase(plan, norms, finish, update);
    } else {
      // r = 1: no norms needed, one pass.
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
