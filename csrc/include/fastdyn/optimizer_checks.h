// Argument checks shared by the fused optimizer ops (adam_, sgd_, lamb_, lars_), CPU and
// CUDA alike. They run before any tensor is touched, so a bad call changes nothing.
#pragma once
#include <initializer_list>
#include <utility>
#include <vector>

#include "fastdyn/checks.h"

namespace fastdyn {

struct NamedList {
  const char* name;
  at::TensorList tensors;
};

// A hyperparameter the kernels read from a one-element tensor (beta1, momentum, weight_decay).
struct NamedScalar {
  const char* name;
  const at::Tensor& tensor;
};

struct UpdateGroup {
  at::Device device = at::Device(at::kCPU);
  at::ScalarType param_dtype = at::kFloat;
  at::ScalarType state_dtype = at::kFloat;
  bool has_master = false;
  int64_t size = 0;

  // 16-bit params without fp32 masters: the stored value drops part of the update to
  // rounding, so track_stats measures ||update|| as the change actually stored
  bool rounds_into_param() const {
    return !has_master && (param_dtype == at::kHalf || param_dtype == at::kBFloat16);
  }
};

// params/grads pair up; every list in `states` (empty lists allowed when `optional`) pairs
// with params and shares one dtype; master_params is empty or float32 copies of params;
// steps is empty or one scalar per param; lr (absent for LAMB's moment pass), grad_scale and
// found_inf are scalars on the params' device; stats is float32 [n, 4]. None of what the
// update writes (stats included) shares memory with another of them or with what it reads
// besides the gradients (the scalars, trust_ratios).
inline UpdateGroup check_update_group(at::TensorList params, at::TensorList grads,
                                      std::initializer_list<NamedList> states,
                                      at::TensorList master_params, at::TensorList steps,
                                      const c10::optional<at::Tensor>& lr,
                                      const c10::optional<at::Tensor>& grad_scale,
                                      const c10::optional<at::Tensor>& found_inf,
                                      const c10::optional<at::Tensor>& stats,
                                      std::initializer_list<NamedScalar> hypers,
                                      const c10::optional<at::Tensor>& trust_ratios = c10::nullopt) {
  UpdateGroup g;
  g.size = static_cast<int64_t>(params.size());
  auto device = check_float_list("params", params);
  // an empty list: the scalars name the device (lamb_moments_ has no lr)
  if (device.has_value()) {
    g.device = *device;
  } else if (lr.has_value() || grad_scale.has_value() || found_inf.has_value()) {
    g.device = (lr.has_value() ? *lr : grad_scale.has_value() ? *grad_scale : *found_inf).device();
  } else if (hypers.size() > 0) {
    g.device = hypers.begin()->tensor.device();
  }
  for (const NamedScalar& h : hypers) check_scalar_tensor(h.name, h.tensor, g.device);
  if (lr.has_value()) check_scalar_tensor("lr", *lr, g.device);
  if (grad_scale.has_value()) check_scalar_tensor("grad_scale", *grad_scale, g.device);
  if (found_inf.has_value()) check_scalar_tensor("found_inf", *found_inf, g.device);
  check_same_length("grads", grads.size(), "params", params.size());
  if (params.empty()) return g;

  g.param_dtype = common_dtype("params", params);
  check_float_list("grads", grads, g.device);
  check_like("grads", grads, "params", params);
  TORCH_CHECK_TYPE(common_dtype("grads", grads) == g.param_dtype, "grads have dtype ",
                   grads[0].scalar_type(), " but params have ", g.param_dtype);
  bool have_state_dtype = false;
  for (const NamedList& s : states) {
    if (s.tensors.empty()) continue;
    check_float_list(s.name, s.tensors, g.device);
    check_like(s.name, s.tensors, "params", params);
    const at::ScalarType t = common_dtype(s.name, s.tensors);
    TORCH_CHECK_TYPE(!have_state_dtype || t == g.state_dtype, s.name, " has dtype ", t,
                     " but the other optimizer state has ", g.state_dtype);
    g.state_dtype = t;
    have_state_dtype = true;
  }
  g.has_master = !master_params.empty();
  // No state lists (SGD without momentum): nothing to match; fp32 goes with master weights.
  if (!have_state_dtype) g.state_dtype = g.has_master ? at::kFloat : g.param_dtype;
  const bool low_precision = g.param_dtype == at::kHalf || g.param_dtype == at::kBFloat16;
  TORCH_CHECK_TYPE(g.state_dtype == g.param_dtype || (g.state_dtype == at::kFloat && low_precision),
                   "optimizer state has dtype ", g.state_dtype, " for params of dtype ",
                   g.param_dtype, "; state must match the params, or be float32 for "
                   "float16/bfloat16 params");
  if (g.has_master) {
    check_float_list("master_params", master_params, g.device);
    check_like("master_params", master_params, "params", params);
    TORCH_CHECK_TYPE(common_dtype("master_params", master_params) == at::kFloat,
                     "master_params must be float32, got ", master_params[0].scalar_type());
    TORCH_CHECK_TYPE(low_precision,
                     "master_params are for float16/bfloat16 params, got params of dtype ",
                     g.param_dtype);
    TORCH_CHECK_TYPE(g.state_dtype == at::kFloat,
                     "with master_params the optimizer state must be float32, got ",
                     g.state_dtype);
  }
  if (!steps.empty()) {
    check_same_length("state_steps", steps.size(), "params", params.size());
    for (size_t i = 0; i < steps.size(); ++i) {
      TORCH_CHECK_VALUE(steps[i].defined() && steps[i].numel() == 1, "state_steps[", i,
                        "] must be a one-element tensor");
      TORCH_CHECK_TYPE(steps[i].scalar_type() == at::kFloat || steps[i].scalar_type() == at::kDouble,
                       "state_steps[", i, "] must be float32 or float64, got ",
                       steps[i].scalar_type());
      TORCH_CHECK_VALUE(steps[i].device() == g.device, "state_steps[", i, "] is on ",
                        steps[i].device(), " but params are on ", g.device);
      // the CUDA kernels read every step with state_steps[0]'s width
      TORCH_CHECK_TYPE(steps[i].scalar_type() == steps[0].scalar_type(), "state_steps[", i,
                       "] is ", steps[i].scalar_type(), " but state_steps[0] is ",
                       steps[0].scalar_type(), ": the steps must share one dtype");
    }
  }
  if (stats.has_value()) {
    const at::Tensor& s = *stats;
    TORCH_CHECK_VALUE(s.device() == g.device, "stats is on ", s.device(), " but params are on ",
                      g.device);
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, "stats must be float32, got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == g.size && s.size(1) == 4 && s.is_contiguous(),
                      "stats must be a contiguous float32 tensor of shape [", g.size,
                      ", 4], got shape ", s.sizes());
  }
  {
    // everything the update writes, and the scalars it reads (stats checked dense above)
    std::vector<MemoryUse> uses{written_list("params", params), written_list("state_steps", steps)};
    for (const NamedList& s : states) uses.push_back(written_list(s.name, s.tensors));
    if (g.has_master) uses.push_back(written_list("master_params", master_params));
    if (lr.has_value()) uses.push_back(read_tensor("lr", *lr));
    if (grad_scale.has_value()) uses.push_back(read_tensor("grad_scale", *grad_scale));
    if (found_inf.has_value()) uses.push_back(read_tensor("found_inf", *found_inf));
    if (stats.has_value()) uses.push_back(written_tensor("stats", *stats));
    if (trust_ratios.has_value()) uses.push_back(read_tensor("trust_ratios", *trust_ratios));
    for (const NamedScalar& h : hypers) uses.push_back(read_tensor(h.name, h.tensor));
    check_no_shared_memory(uses);
  }
  return g;
}

// The checks of each update op, shared by its CPU and CUDA launchers.
inline UpdateGroup check_adam_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                   at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                                   at::TensorList master_params, at::TensorList state_steps,
                                   const at::Tensor& lr, const at::Tensor& beta1,
                                   const at::Tensor& weight_decay, bool amsgrad,
                                   const c10::optional<at::Tensor>& grad_scale,
                                   const c10::optional<at::Tensor>& found_inf,
                                   const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_update_group(
      params, grads,
      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"max_exp_avg_sqs", max_exp_avg_sqs}},
      master_params, state_steps, lr, grad_scale, found_inf, stats,
      {{"beta1", beta1}, {"weight_decay", weight_decay}});
  check_same_length("exp_avgs", exp_avgs.size(), "params", params.size());
  check_same_length("exp_avg_sqs", exp_avg_sqs.size(), "params", params.size());
  check_same_length("state_steps", state_steps.size(), "params", params.size());
  if (amsgrad) check_same_length("max_exp_avg_sqs", max_exp_avg_sqs.size(), "params", params.size());
  return grp;
}

inline UpdateGroup check_lamb_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                   at::TensorList exp_avg_sqs, at::TensorList master_params,
                                   at::TensorList state_steps, const at::Tensor& lr,
                                   const at::Tensor& beta1, const at::Tensor& weight_decay,
                                   const c10::optional<at::Tensor>& grad_scale,
                                   const c10::optional<at::Tensor>& found_inf,
                                   const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_update_group(
      params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, master_params,
      state_steps, lr, grad_scale, found_inf, stats,
      {{"beta1", beta1}, {"weight_decay", weight_decay}});
  check_same_length("exp_avgs", exp_avgs.size(), "params", params.size());
  check_same_length("exp_avg_sqs", exp_avg_sqs.size(), "params", params.size());
  check_same_length("state_steps", state_steps.size(), "params", params.size());
  return grp;
}

// LAMB's passes as separate ops (lamb_moments_, lamb_apply_): the lists of lamb_ they read.
inline UpdateGroup check_lamb_moments_args(at::TensorList params, at::TensorList grads,
                                           at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                           at::TensorList master_params, at::TensorList state_steps,
                                           const at::Tensor& beta1, const at::Tensor& weight_decay,
                                           const c10::optional<at::Tensor>& grad_scale,
                                           const c10::optional<at::Tensor>& found_inf) {
  const UpdateGroup grp = check_update_group(
      params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, master_params,
      state_steps, c10::nullopt, grad_scale, found_inf, c10::nullopt,
      {{"beta1", beta1}, {"weight_decay", weight_decay}});
  check_same_length("exp_avgs", exp_avgs.size(), "params", params.size());
  check_same_length("exp_avg_sqs", exp_avg_sqs.size(), "params", params.size());
  check_same_length("state_steps", state_steps.size(), "params", params.size());
  return grp;
}

// Per-tensor trust ratios handed to an update op: [n] floating point on the params' device.
inline void check_trust_ratios(const at::Tensor& r, const UpdateGroup& g) {
  TORCH_CHECK_VALUE(r.device() == g.device, "trust_ratios is on ", r.device(),
                    " but params are on ", g.device);
  TORCH_CHECK_TYPE(at::isFloatingType(r.scalar_type()), "trust_ratios must be floating point, got ",
                   r.scalar_type());
  TORCH_CHECK_VALUE(r.dim() == 1 && r.size(0) == g.size, "trust_ratios must have shape [", g.size,
                    "], got ", r.sizes());
}

inline UpdateGroup check_lamb_apply_args(at::TensorList params, at::TensorList exp_avgs,
                                         at::TensorList exp_avg_sqs, at::TensorList master_params,
                                         at::TensorList state_steps, const at::Tensor& lr,
                                         const at::Tensor& trust_ratios, const at::Tensor& beta1,
                                         const at::Tensor& weight_decay,
                                         const c10::optional<at::Tensor>& found_inf) {
  // no gradients are read: params stand in for them
  const UpdateGroup grp = check_update_group(
      params, params, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, master_params,
      state_steps, lr, c10::nullopt, found_inf, c10::nullopt,
      {{"beta1", beta1}, {"weight_decay", weight_decay}}, trust_ratios);
  check_same_length("exp_avgs", exp_avgs.size(), "params", params.size());
  check_same_length("exp_avg_sqs", exp_avg_sqs.size(), "params", params.size());
  check_same_length("state_steps", state_steps.size(), "params", params.size());
  check_trust_ratios(trust_ratios, grp);
  return grp;
}

// SGD and LARS: a momentum buffer per param, or none (no momentum: the momentum tensor is
// not read).
inline UpdateGroup check_momentum_args(at::TensorList params, at::TensorList grads,
                                       at::TensorList momentum_buffers, at::TensorList master_params,
                                       const at::Tensor& lr, const at::Tensor& momentum,
                                       const at::Tensor& weight_decay,
                                       const c10::optional<at::Tensor>& grad_scale,
                                       const c10::optional<at::Tensor>& found_inf,
                                       const c10::optional<at::Tensor>& stats,
                                       const c10::optional<at::Tensor>& trust_ratios = c10::nullopt) {
  const UpdateGroup grp = check_update_group(
      params, grads, {{"momentum_buffers", momentum_buffers}}, master_params, {}, lr, grad_scale,
      found_inf, stats, {{"momentum", momentum}, {"weight_decay", weight_decay}}, trust_ratios);
  if (!momentum_buffers.empty()) {
    check_same_length("momentum_buffers", momentum_buffers.size(), "params", params.size());
  }
  return grp;
}

// Columns of the stats tensor an update op fills when asked (track_stats).
enum StatsColumn : int { kGradNorm = 0, kParamNorm = 1, kUpdateNorm = 2, kTrustRatio = 3 };

}  // namespace fastdyn
