// Argument checks of the norm ops (multi_tensor_norm, multi_tensor_scale_,
// multi_tensor_unscale_norm_, clip_grad_norm_), shared by their CPU and CUDA launchers and
// the Triton backend's check ops (csrc/checks.cpp). They run before any tensor is touched.
// Each returns the device of the call: nullopt for an empty list that names none.
#pragma once
#include "fastdyn/checks.h"

namespace fastdyn {

// An empty list with an inv_scale is on inv_scale's device.
inline c10::optional<at::Device> check_norm_args(at::TensorList tensors, double ord,
                                                 const c10::optional<at::Tensor>& inv_scale = {}) {
  check_norm_ord(ord);
  const auto device = check_float_list("tensors", tensors);
  if (!inv_scale.has_value()) return device;
  check_scalar_tensor("inv_scale", *inv_scale, device.value_or(inv_scale->device()));
  return device.value_or(inv_scale->device());
}

// An empty list still needs a one-element scale (on its own device): the kernels read it.
inline c10::optional<at::Device> check_scale_args(at::TensorList tensors, const at::Tensor& scale) {
  const auto device = check_float_list("tensors", tensors);
  check_scalar_tensor("scale", scale, device.value_or(scale.device()));
  check_no_shared_memory({written_list("tensors", tensors), read_tensor("scale", scale)});
  return device;
}

// An empty list reaches a kernel through inv_scale and found_inf: they name the device.
inline at::Device check_unscale_norm_args(at::TensorList tensors, const at::Tensor& inv_scale,
                                          const at::Tensor& found_inf, double ord) {
  check_norm_ord(ord);
  TORCH_CHECK_VALUE(found_inf.defined(), "found_inf is undefined");
  const at::Device device = check_float_list("tensors", tensors).value_or(found_inf.device());
  check_scalar_tensor("inv_scale", inv_scale, device);
  check_scalar_tensor("found_inf", found_inf, device);
  check_found_inf_dtype(found_inf);
  check_no_shared_memory({written_list("tensors", tensors), read_tensor("inv_scale", inv_scale),
                          written_tensor("found_inf", found_inf)});
  return device;
}

inline c10::optional<at::Device> check_clip_args(at::TensorList grads, double ord) {
  check_norm_ord(ord);
  const auto device = check_float_list("grads", grads);
  check_no_shared_memory({written_list("grads", grads)});
  return device;
}

}  // namespace fastdyn
