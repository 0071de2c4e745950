// Every op's argument checks as ops of their own, for the Python-side Triton backend: the
// checks the CPU and CUDA launchers run (fastdyn/norm_checks.h, fastdyn/optimizer_checks.h),
// so every backend refuses the same calls with the same messages. Host code only: registered for every
// backend, whatever kernels this build has.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/optimizer_checks.h"

namespace fastdyn {
namespace {

void check_norm(at::TensorList tensors, double ord, const c10::optional<at::Tensor>& inv_scale) {
  check_norm_args(tensors, ord, inv_scale);
}

void check_scale(at::TensorList tensors, const at::Tensor& scale) { check_scale_args(tensors, scale); }

void check_unscale_norm(at::TensorList tensors, const at::Tensor& inv_scale,
                        const at::Tensor& found_inf, double ord) {
  check_unscale_norm_args(tensors, inv_scale, found_inf, ord);
}

void check_clip(at::TensorList grads, double ord) { check_clip_args(grads, ord); }

void check_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
                const at::Tensor& beta1, const at::Tensor& weight_decay, bool amsgrad,
                const c10::optional<at::Tensor>& grad_scale,
                const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  check_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
                  state_steps, lr, beta1, weight_decay, amsgrad, grad_scale, found_inf, stats);
}

void check_momentum(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    at::TensorList master_params, const at::Tensor& lr, const at::Tensor& momentum,
                    const c10::optional<at::Tensor>& grad_scale,
                    const c10::optional<at::Tensor>& found_inf,
                    const c10::optional<at::Tensor>& stats,
                    const c10::optional<at::Tensor>& trust_ratios, const at::Tensor& weight_decay) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, weight_decay, grad_scale, found_inf, stats,
                                              trust_ratios);
  if (trust_ratios.has_value()) check_trust_ratios(*trust_ratios, grp);
}

void check_lamb(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList master_params,
                at::TensorList state_steps, const at::Tensor& lr, const at::Tensor& beta1,
                const at::Tensor& weight_decay, const c10::optional<at::Tensor>& grad_scale,
                const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  check_lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, lr, beta1,
                  weight_decay, grad_scale, found_inf, stats);
}

void check_lamb_moments(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList master_params,
                        at::TensorList state_steps, const at::Tensor& beta1,
                        const at::Tensor& weight_decay, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf) {
  check_lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs, master_params, state_steps, beta1,
                          weight_decay, grad_scale, found_inf);
}

void check_lamb_apply(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                      at::TensorList master_params, at::TensorList state_steps,
                      const at::Tensor& lr, const at::Tensor& trust_ratios,
                      const at::Tensor& beta1, const at::Tensor& weight_decay,
                      const c10::optional<at::Tensor>& found_inf) {
  check_lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params, state_steps, lr,
                        trust_ratios, beta1, weight_decay, found_inf);
}

void check_written_memory(at::TensorList tensors) {
  const MemoryUse uses[] = {written_list("tensors", tensors)};
  check_no_shared_memory(uses);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CompositeExplicitAutograd, m) {
  m.impl("check_written_memory", &check_written_memory);
  m.impl("check_norm_args", &check_norm);
  m.impl("check_scale_args", &check_scale);
  m.impl("check_unscale_norm_args", &check_unscale_norm);
  m.impl("check_clip_args", &check_clip);
  m.impl("check_adam_args", &check_adam);
  m.impl("check_momentum_args", &check_momentum);
  m.impl("check_lamb_args", &check_lamb);
  m.impl("check_lamb_moments_args", &check_lamb_moments);
  m.impl("check_lamb_apply_args", &check_lamb_apply);
}

}  // namespace fastdyn
