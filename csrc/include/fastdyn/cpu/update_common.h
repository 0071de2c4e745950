// What every CPU optimizer op does around its kernel: skip on found_inf, advance the step
// counters, read lr and the gradient divisor, reduce the optional statistics.
#pragma once
#include <array>
#include <vector>

#include "fastdyn/cpu/multi_tensor.h"
#include "fastdyn/math/norm.h"
#include "fastdyn/optimizer_checks.h"

namespace fastdyn {
namespace cpu {

struct StepContext {
  bool skip = false;       // found_inf is set: leave params, state and steps untouched
  double lr = 0.0;
  double inv_grad_scale = 1.0;
};

// Ops without a learning rate (LAMB's moment pass): ctx.lr stays 0.
inline StepContext begin_step(at::TensorList steps, const c10::optional<at::Tensor>& grad_scale,
                              const c10::optional<at::Tensor>& found_inf) {
  StepContext ctx;
  if (found_inf.has_value() && scalar_value(*found_inf) != 0.0) {
    ctx.skip = true;
    return ctx;
  }
  for (const at::Tensor& s : steps) set_scalar_value(s, scalar_value(s) + 1.0);
  if (grad_scale.has_value()) ctx.inv_grad_scale = 1.0 / scalar_value(*grad_scale);
  return ctx;
}

inline StepContext begin_step(at::TensorList steps, const at::Tensor& lr,
                              const c10::optional<at::Tensor>& grad_scale,
                              const c10::optional<at::Tensor>& found_inf) {
  StepContext ctx = begin_step(steps, grad_scale, found_inf);
  if (!ctx.skip) ctx.lr = scalar_value(lr);
  return ctx;
}

// f(step) for each tensor's step count, called once per run of equal counts (the usual
// case: every tensor has the same): the bias corrections' two pow()s, per chunk, took ~5% of
// an adam_ call on 1,000 one-element tensors.
template <typename F>
auto per_tensor_of_step(at::TensorList steps, F&& f) {
  std::vector<decltype(f(0.0))> out;
  out.reserve(steps.size());
  double last = 0.0;
  for (const at::Tensor& s : steps) {
    const double step = scalar_value(s);
    out.push_back(!out.empty() && step == last ? out.back() : f(step));
    last = step;
  }
  return out;
}

// Per-chunk sums of squares of (grad, param, update) for track_stats.
using StatsPartial = std::array<double, 3>;

// Writes ||g||, ||p||, ||update|| and the trust ratio of every tensor into stats [n, 4];
// ||update|| from the partials' third column unless update_norms gives it per tensor.
inline void write_stats(const at::Tensor& stats, const ChunkPlan& plan,
                        const std::vector<StatsPartial>& partials,
                        const std::vector<double>& trust_ratios,
                        const std::vector<double>& update_norms = {}) {
  float* out = stats.data_ptr<float>();
  const int64_t n = static_cast<int64_t>(plan.first_chunk.size()) - 1;
  for (int64_t t = 0; t < n; ++t) {
    StatsPartial acc = {0.0, 0.0, 0.0};
    for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) {
      for (int k = 0; k < 3; ++k) acc[k] += partials[c][k];
    }
    out[4 * t + kGradNorm] = static_cast<float>(math::fsqrt(acc[0]));
    out[4 * t + kParamNorm] = static_cast<float>(math::fsqrt(acc[1]));
    out[4 * t + kUpdateNorm] = static_cast<float>(
        update_norms.empty() ? math::fsqrt(acc[2]) : update_norms[t]);
    out[4 * t + kTrustRatio] = trust_ratios.empty() ? 1.f : static_cast<float>(trust_ratios[t]);
  }
}

// Pointer to element `offset` of list[t], or nullptr for an empty (absent) list.
template <typename T>
inline T* list_ptr(at::TensorList list, int64_t t, int64_t offset) {
  return list.empty() ? nullptr : static_cast<T*>(list[t].data_ptr()) + offset;
}

}  // namespace cpu
}  // namespace fastdyn
