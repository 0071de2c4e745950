// Fused LAMB on the CPU. Phase A updates the moments and accumulates ||p||^2 and ||u||^2
// per chunk; the trust ratio of each tensor follows; phase B recomputes u from the stored
// moments and applies it. Batches of tensors (cpu::two_phase) keep phase B's reads in cache.
// Global gradient clipping arrives folded into grad_scale (the optimizer computes it).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

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
  *out = lane_sums<A, WideLanes<P, S>>(n, [&]<typename L>(int64_t i, L& norm_g, L& norm_p, L& norm_u) {
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
    norm_g = gv;
    norm_p = pv;
    norm_u = u;
  });
}

// With kStats, *applied's third column gets the sum of squares of the change of p as
// stored (track_stats of 16-bit params without masters; the others take lr * r * ||u||).
template <typename P, typename S, bool kMaster, bool kStats>
void lamb_apply_chunk(P* __restrict__ p, const S* __restrict__ m, const S* __restrict__ v,
                      float* __restrict__ master, int64_t n,
                      const math::LambHyper<typename OpMath<P>::type> h,
                      const math::LambStepScalars<typename OpMath<P>::type> s,
                      typename OpMath<P>::type step, StatsPartial* applied) {
  using A = typename OpMath<P>::type;
  auto apply = [&]<typename L>(int64_t i, L& zero_a, L& zero_b, L& norm_change) {
    const L pv = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    const L out = pv - step * math::lamb_direction(pv, load_lanes<L>(m + i), load_lanes<L>(v + i), h, s);
    if constexpr (kMaster) store_lanes(master + i, out);
    store_lanes(p + i, out);
    const L change = held_after<P, kMaster>(out, p, i) - pv;
    zero_a = zero_b = L(A(0));
    norm_change = change;
  };
  for_elements<kStats, A, WideLanes<P, S>>(n, apply, applied);
}

// Runs body(moments, apply) with the chunk kernels of the group's dtypes:
//   moments(chunk, partial) updates the chunk's m and v, and sums g^2, p^2, u^2 into partial;
//   apply(chunk, step, applied) moves the chunk's p by -step * u (and with applied, sums
//   the squares of the stored change into its third column).
template <typename Body>
void with_lamb_kernels(const UpdateGroup& grp, at::TensorList params, at::TensorList grads,
                       at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                       at::TensorList master_params, at::TensorList state_steps, double beta1,
                       double beta2, double eps, double weight_decay, bool bias_correction,
                       bool grad_averaging, double inv_grad_scale, Body&& body) {
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    const auto h = math::lamb_hyper<A>(beta1, beta2, grad_averaging, eps, weight_decay);
    const auto per_tensor = per_tensor_of_step(state_steps, [&](double step) {
      return math::lamb_step_scalars<A>(h, step, bias_correction);
    });
    auto scalars = [&](int64_t t) -> const auto& { return per_tensor[t]; };
    auto moments = [&](const Chunk& c, StatsPartial* out) {
      const int64_t t = c.tensor, b = c.begin;
      const auto s = scalars(t);
      if (grp.has_master) {
        lamb_moments_chunk<P, S, true>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
                                       list_ptr<S>(exp_avgs, t, b), list_ptr<S>(exp_avg_sqs, t, b),
                                       list_ptr<float>(master_params, t, b), c.end - b, h, s,
                                       A(inv_grad_scale), out);
      } else {
        lamb_moments_chunk<P, S, false>(list_ptr<P>(params, t, b), list_ptr<const P>(grads, t, b),
                                        list_ptr<S>(exp_avgs, t, b), list_ptr<S>(exp_avg_sqs, t, b),
                                        nullptr, c.end - b, h, s, A(inv_grad_scale), out);
      }
    };
    auto apply = [&](const Chunk& c, double step, StatsPartial* applied) {
      const int64_t t = c.tensor, b = c.begin;
      const auto s = scalars(t);
      dispatch_flags(grp.has_master, applied != nullptr, [&](auto master_c, auto stats_c) {
        constexpr bool kM = decltype(master_c)::value;
        lamb_apply_chunk<P, S, kM, decltype(stats_c)::value>(
            list_ptr<P>(params, t, b), list_ptr<const S>(exp_avgs, t, b),
            list_ptr<const S>(exp_avg_sqs, t, b), kM ? list_ptr<float>(master_params, t, b) : nullptr,
            c.end - b, h, s, A(step), applied);
      });
    };
    body(moments, apply);
  });
}

// Sum of column k of the partials of tensor t's chunks.
double tensor_sum(const ChunkPlan& plan, const std::vector<StatsPartial>& partials, int64_t t, int k) {
  double acc = 0;
  for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) acc += partials[c][k];
  return acc;
}

void lamb_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList master_params, at::TensorList state_steps,
           const at::Tensor& lr, const at::Tensor& beta1, double beta2, double eps,
           const at::Tensor& weight_decay, bool bias_correction, bool grad_averaging,
           bool trust_clip, bool always_adapt,
           const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
           const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                          state_steps, lr, beta1, weight_decay, grad_scale,
                                          found_inf, stats);
  if (params.empty()) return;
  const StepContext ctx = begin_step(state_steps, lr, grad_scale, found_inf);
  if (ctx.skip) return;

  const double wd_value = scalar_value(weight_decay);  // (a CPU tensor)
  const bool adapt = wd_value != 0.0 || always_adapt;
  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(plan.chunks.size());
  std::vector<double> ratios(params.size(), 1.0);
  // 16-bit params without masters lose part of the update to rounding: their ||update|| is
  // measured in the apply pass (the others' is lr * r * ||u||, to the rounding of p)
  std::vector<StatsPartial> applied(stats.has_value() && grp.rounds_into_param() ? plan.chunks.size()
                                                                                : 0);
  with_lamb_kernels(grp, params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps,
                    scalar_value(beta1), beta2, eps, wd_value, bias_correction, grad_averaging,
                    ctx.inv_grad_scale, [&](auto& moments, auto& apply) {
    auto finish = [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        ratios[t] = math::lamb_trust_ratio(math::fsqrt(tensor_sum(plan, partials, t, 1)),
                                           math::fsqrt(tensor_sum(plan, partials, t, 2)), adapt,
                                           trust_clip);
      }
    };
    two_phase(
        plan, [&](const Chunk& c, int64_t ci) { moments(c, &partials[ci]); }, finish,
        [&](const Chunk& c, int64_t ci) {
          apply(c, ctx.lr * ratios[c.tensor], applied.empty() ? nullptr : &applied[ci]);
        });
  });
  if (stats.has_value()) {
    // ||update|| = lr * r * ||u||, from the ||u||^2 partials phase A already has, or the
    // stored change that the apply pass measured.
    std::vector<double> update_norms(params.size());
    for (int64_t t = 0; t < grp.size; ++t) {
      update_norms[t] = applied.empty()
                            ? ctx.lr * ratios[t] * math::fsqrt(tensor_sum(plan, partials, t, 2))
                            : math::fsqrt(tensor_sum(plan, applied, t, 2));
    }
    write_stats(*stats, plan, partials, ratios, update_norms);
  }
}

// LAMB's two passes as two ops, for callers that must combine the sums over several
// processes first (sharded DTensor parameters): lamb_moments_ returns per tensor
// (sum g^2, sum p^2, sum u^2) [n, 3] in float64 (NaN when found_inf skips the step);
// lamb_apply_ moves p by -lr * trust_ratios[t] * u.
at::Tensor lamb_moments_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList master_params,
                         at::TensorList state_steps, const at::Tensor& beta1, double beta2,
                         double eps, const at::Tensor& weight_decay, bool bias_correction,
                         bool grad_averaging, const c10::optional<at::Tensor>& grad_scale,
                         const c10::optional<at::Tensor>& found_inf) {
  const UpdateGroup grp = check_lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs,
                                                  master_params, state_steps, beta1, weight_decay,
                                                  grad_scale, found_inf);
  const int64_t n = static_cast<int64_t>(params.size());
  at::Tensor sums = at::full({n, 3}, std::numeric_limits<double>::quiet_NaN(),
                             at::TensorOptions().dtype(at::kDouble));
  if (params.empty()) return sums;
  const StepContext ctx = begin_step(state_steps, grad_scale, found_inf);
  if (ctx.skip) return sums;
  const ChunkPlan plan = plan_chunks(params);
  std::vector<StatsPartial> partials(plan.chunks.size());
  with_lamb_kernels(grp, params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps,
                    scalar_value(beta1), beta2, eps, scalar_value(weight_decay), bias_correction,
                    grad_averaging, ctx.inv_grad_scale, [&](auto& moments, auto&) {
    for_each_chunk(plan, [&](const Chunk& c, int64_t ci) { moments(c, &partials[ci]); });
  });
  double* out = sums.data_ptr<double>();
  for (int64_t t = 0; t < n; ++t) {
    for (int k = 0; k < 3; ++k) out[3 * t + k] = tensor_sum(plan, partials, t, k);
  }
  return sums;
}

void lamb_apply_(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
                 const at::Tensor& trust_ratios, const at::Tensor& beta1, double beta2, double eps,
                 const at::Tensor& weight_decay, bool bias_correction,
                 const c10::optional<at::Tensor>& found_inf) {
  const UpdateGroup grp = check_lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params,
                                                state_steps, lr, trust_ratios, beta1, weight_decay,
                                                found_inf);
  if (params.empty()) return;
  const StepContext ctx = begin_step({}, lr, c10::nullopt, found_inf);
  if (ctx.skip) return;
  const at::Tensor ratios = trust_ratios.to(at::kDouble).contiguous();
  const double* r = ratios.data_ptr<double>();
  const ChunkPlan plan = plan_chunks(params);
  // the gradients are not read: exp_avgs stands in for the list (same shapes)
  with_lamb_kernels(grp, params, exp_avgs, exp_avgs, exp_avg_sqs, master_params, state_steps,
                    scalar_value(beta1), beta2, eps, scalar_value(weight_decay), bias_correction,
                    true, 1.0,
                    [&](auto&, auto& apply) {
    for_each_chunk(plan, [&](const Chunk& c, int64_t) { apply(c, ctx.lr * r[c.tensor], nullptr); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("lamb_", &lamb_);
  m.impl("lamb_moments_", &lamb_moments_);
  m.impl("lamb_apply_", &lamb_apply_);
}

}  // namespace cpu
}  // namespace fastdyn
