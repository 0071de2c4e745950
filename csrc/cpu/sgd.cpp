// Fused SGD (momentum, dampening, nesterov, weight decay, maximize) on the CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cpu {
namespace {

template <typename P, typename S, bool kMaster, bool kStats, bool kMomentum>
void sgd_chunk(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ buf,
               float* __restrict__ master, int64_t n, typename OpMath<P>::type lr,
               typename OpMath<P>::type weight_decay, bool maximize,
               const math::MomentumHyper<typename OpMath<P>::type> mh, bool first_step,
               typename OpMath<P>::type inv_scale, StatsPartial* stats) {
  using A = typename OpMath<P>::type;
  double g2 = 0, p2 = 0, d2 = 0;
#pragma omp simd reduction(+ : g2, p2, d2)
  for (int64_t i = 0; i < n; ++i) {
    const A p_old = kMaster ? static_cast<A>(master[i]) : load<A>(p[i]);
    const A gv = load<A>(g[i]) * inv_scale;
    A d = math::sgd_direction(p_old, gv, weight_decay, maximize ? A(-1) : A(1));
    if (kMomentum) {
      const A bv = math::momentum_buffer(d, load<A>(buf[i]), mh, first_step);
      buf[i] = store<S>(bv);
      d = math::momentum_direction(d, bv, mh);
    }
    const A pv = p_old - lr * d;
    if (kMaster) master[i] = static_cast<float>(pv);
    p[i] = store<P>(pv);
    if (kStats) {
      g2 += double(gv) * double(gv);
      p2 += double(p_old) * double(p_old);
      d2 += double(pv - p_old) * double(pv - p_old);
    }
  }
  if (kStats) *stats = {g2, p2, d2};
}

void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
          at::TensorList master_params, const at::Tensor& lr, double momentum, double dampening,
          double weight_decay, bool nesterov, bool maximize, bool is_first_step,
          const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
          const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step({}, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(stats.has_value() ? plan.chunks.size() : 0);
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const math::MomentumHyper<A> mh{A(momentum), A(dampening), nesterov};
    for_each_chunk(plan, [&](const Chunk& c, int64_t ci) {
      const int64_t t = c.tensor, b = c.begin;
      S* buf = momentum != 0.0 ? list_ptr<S>(momentum_buffers, t, b) : nullptr;
      auto run = [&](auto master_c, auto stats_c) {
        auto kernel = buf ? sgd_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, true>
                          : sgd_chunk<P, S, decltype(master_c)::value, decltype(stats_c)::value, false>;
        kernel(
            list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b), buf,
            list_ptr<float>(master_params, t, b), c.end - b, A(ctx.lr), A(weight_decay),
            maximize, mh, is_first_step, A(ctx.inv_grad_scale),
            partials.empty() ? nullptr : &partials[ci]);
      };
      dispatch_flags(grp.has_master, !partials.empty(), run);
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
