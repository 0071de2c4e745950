// The op schemas, defined once. Every mutated list has its own alias set (like
// aten::_fused_adam_), so torch.compile's functionalization knows exactly what each op writes.
// Kernels register themselves per backend in cpu/*.cpp and cuda/*.cu.
// What a scheduler changes during training is a one-element tensor on the params' device,
// read by the kernels: lr, beta1 / momentum (OneCycleLR and CyclicLR cycle them), and
// weight_decay (DINO-style cosine schedules). As floats, a compiled step was
// retraced for every new value (a graph per value, then dynamo's recompile limit). SGD and LARS apply momentum when momentum_buffers are given.
#include <torch/library.h>

TORCH_LIBRARY(fastdyn, m) {
  // With inv_scale: the norms of the tensors times inv_scale (loss-scaled gradients, unscaled
  // without a write), their squares taken in float64 (see cpu/lane_sums.h, sum_squares_double).
  m.def(
      "multi_tensor_norm(Tensor[] tensors, float ord=2., bool per_tensor=False, "
      "Tensor? inv_scale=None) -> (Tensor, Tensor)");
  m.def("multi_tensor_scale_(Tensor(a!)[] tensors, Tensor scale) -> ()");
  m.def(
      "multi_tensor_unscale_norm_(Tensor(a!)[] tensors, Tensor inv_scale, Tensor(b!) found_inf, "
      "float ord=2., bool per_tensor=False) -> (Tensor, Tensor)");
  m.def("clip_grad_norm_(Tensor(a!)[] grads, float max_norm, float ord=2.) -> Tensor");
  m.def(
      "adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] master_params, Tensor(f!)[] state_steps, "
      "Tensor lr, Tensor beta1, float beta2, Tensor weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor(g!)? stats=None) -> ()");
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] master_params, Tensor lr, Tensor momentum, float dampening, "
      "Tensor weight_decay, bool nesterov, bool maximize, bool is_first_step, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor(d!)? stats=None) -> ()");
  m.def(
      "lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] master_params, Tensor(e!)[] state_steps, Tensor lr, Tensor beta1, float beta2, "
      "float eps, Tensor weight_decay, bool bias_correction, bool grad_averaging, bool trust_clip, "
      "bool always_adapt, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(f!)? stats=None) -> ()");
  m.def(
      "lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] master_params, Tensor lr, Tensor momentum, float dampening, "
      "Tensor weight_decay, bool nesterov, float trust_coeff, float eps, bool trust_clip, "
      "bool always_adapt, bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(d!)? stats=None, Tensor? trust_ratios=None) -> ()");
  // LAMB's two passes as two ops, for sums that must be all-reduced between them (sharded
  // DTensor params): per tensor (sum g^2, sum p^2, sum u^2) [n, 3] float64, then the apply.
  m.def(
      "lamb_moments_(Tensor[] params, Tensor[] grads, Tensor(a!)[] exp_avgs, "
      "Tensor(b!)[] exp_avg_sqs, Tensor[] master_params, Tensor(c!)[] state_steps, Tensor beta1, "
      "float beta2, float eps, Tensor weight_decay, bool bias_correction, bool grad_averaging, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> Tensor");
  m.def(
      "lamb_apply_(Tensor(a!)[] params, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
      "Tensor(b!)[] master_params, Tensor[] state_steps, Tensor lr, Tensor trust_ratios, "
      "Tensor beta1, float beta2, float eps, Tensor weight_decay, bool bias_correction, "
      "Tensor? found_inf=None) -> ()");
  // Every op's argument checks alone (csrc/checks.cpp), for the Triton backend: the same
  // checks and messages as the C++ launchers, at ~0.2 us a param where the Python mirror
  // (fastdyn.ops.checks, kept for fake tensors) took ~5.
  m.def("check_norm_args(Tensor[] tensors, float ord, Tensor? inv_scale=None) -> ()");
  // what a step of several ops writes (fastdyn.optim: every bucket's params and state, before
  // the first op runs) shares no memory
  m.def("check_written_memory(Tensor[] tensors) -> ()");
  m.def("check_scale_args(Tensor[] tensors, Tensor scale) -> ()");
  m.def("check_unscale_norm_args(Tensor[] tensors, Tensor inv_scale, Tensor found_inf, float ord) -> ()");
  m.def("check_clip_args(Tensor[] grads, float ord) -> ()");
  m.def(
      "check_adam_args(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
      "Tensor[] max_exp_avg_sqs, Tensor[] master_params, Tensor[] state_steps, Tensor lr, "
      "Tensor beta1, Tensor weight_decay, bool amsgrad, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor? stats) -> ()");
  m.def(
      "check_momentum_args(Tensor[] params, Tensor[] grads, Tensor[] momentum_buffers, "
      "Tensor[] master_params, Tensor lr, Tensor momentum, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor? stats, Tensor? trust_ratios, Tensor weight_decay) -> ()");
  m.def(
      "check_lamb_args(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
      "Tensor[] master_params, Tensor[] state_steps, Tensor lr, Tensor beta1, "
      "Tensor weight_decay, Tensor? grad_scale, Tensor? found_inf, Tensor? stats) -> ()");
  m.def(
      "check_lamb_moments_args(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, "
      "Tensor[] exp_avg_sqs, Tensor[] master_params, Tensor[] state_steps, Tensor beta1, "
      "Tensor weight_decay, Tensor? grad_scale, Tensor? found_inf) -> ()");
  m.def(
      "check_lamb_apply_args(Tensor[] params, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
      "Tensor[] master_params, Tensor[] state_steps, Tensor lr, Tensor trust_ratios, "
      "Tensor beta1, Tensor weight_decay, Tensor? found_inf) -> ()");
}
