// A libtorch program using fastdyn's ops through the dispatcher (no Python): the norm of a
// list of tensors, clipping, and a LAMB step against values computed with ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>

#include "check.h"

int main() {
  at::manual_seed(0);
  std::vector<at::Tensor> ts = {at::randn({1000}), at::randn({70001}), at::randn({3})};
  auto norm = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("fastdyn::multi_tensor_norm", "")
                  .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, double, bool,
                                                            const std::optional<at::Tensor>&)>();
  auto [total, per] = norm.call(ts, 2.0, true, std::nullopt);
  const double expected = at::cat({ts[0], ts[1], ts[2]}).to(at::kDouble).norm().item<double>();
  EXPECT(std::fabs(total.item<double>() - expected) <= 1e-5 * expected);
  EXPECT(per.size(0) == 3);
  // with inv_scale: the norm of the tensors times it, here of values scaled by 2^80 (their
  // float32 squares would be inf)
  std::vector<at::Tensor> scaled = {ts[0] * std::ldexp(1.0, 80), ts[1] * std::ldexp(1.0, 80)};
  const double expected2 = at::cat({ts[0], ts[1]}).to(at::kDouble).norm().item<double>();
  auto [total2, per2] =
      norm.call(scaled, 2.0, false, at::scalar_tensor(std::ldexp(1.0, -80), at::kDouble));
  EXPECT(std::fabs(total2.item<double>() - expected2) <= 1e-5 * expected2);

  auto clip = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("fastdyn::clip_grad_norm_", "")
                  .typed<at::Tensor(at::TensorList, double, double)>();
  clip.call(ts, 1.0, 2.0);
  const double clipped = at::cat({ts[0], ts[1], ts[2]}).to(at::kDouble).norm().item<double>();
  EXPECT(std::fabs(clipped - 1.0) <= 1e-5);

  // LAMB with weight decay off and always_adapt off is Adam without eps bias: check one
  // element against the formula.
  std::vector<at::Tensor> p = {at::ones({4})}, g = {at::full({4}, 0.5)}, m = {at::zeros({4})},
                          v = {at::zeros({4})}, steps = {at::zeros({})};
  auto lamb = c10::Dispatcher::singleton().findSchemaOrThrow("fastdyn::lamb_", "");
  auto lamb_typed = lamb.typed<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                    at::TensorList, at::TensorList, const at::Tensor&, const at::Tensor&, double,
                                    double, const at::Tensor&, bool, bool, bool, bool,
                                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&)>();
  lamb_typed.call(p, g, m, v, {}, steps, at::scalar_tensor(0.1), at::scalar_tensor(0.9), 0.999, 1e-6,
                  at::scalar_tensor(0.0), true, true,
                  false, false, std::nullopt, std::nullopt, std::nullopt);
  // step 1: u = g/|g| / (1 + eps/|g|) ~ 1 -> p = 1 - 0.1 * u
  const double u = 1.0 / (1.0 + 1e-6 / 0.5);
  EXPECT(std::fabs(p[0][0].item<double>() - (1.0 - 0.1 * u)) <= 1e-6);
  EXPECT(steps[0].item<double>() == 1.0);

  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("libtorch ops: all checks passed\n");
  return 0;
}
