// Unit tests of the per-element math headers (csrc/include/fastdyn/math), which the CPU
// and CUDA kernels share. Plain C++: values worked out by hand or in float64.
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <limits>

#include "fastdyn/math/adam.h"
#include "fastdyn/math/lamb.h"
#include "fastdyn/math/lars.h"
#include "fastdyn/math/norm.h"
#include "fastdyn/math/sgd.h"
#include "check.h"

using namespace fastdyn::math;

static void test_norm() {
  double acc = 0;
  for (double x : {3.0, -4.0}) acc = norm_accumulate<NormKind::L2>(acc, x);
  EXPECT_NEAR(norm_finish<NormKind::L2>(acc), 5.0, 1e-15);
  double m = 0;
  for (double x : {1.0, -7.0, 2.0}) m = norm_accumulate<NormKind::Inf>(m, x);
  EXPECT_NEAR(m, 7.0, 0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT(std::isnan(nan_max(nan, 1.0)) && std::isnan(nan_max(1.0, nan)));
  EXPECT(std::isnan(norm_combine<NormKind::Inf>(2.0, nan)));
  EXPECT(is_finite(1.0) && !is_finite(nan) && !is_finite(std::numeric_limits<double>::infinity()));
  // torch's clip rule: min(max_norm / (total + 1e-6), 1); NaN stays NaN
  EXPECT_NEAR(clip_coefficient(10.0, 1.0), 1.0 / (10.0 + 1e-6), 1e-15);
  EXPECT_NEAR(clip_coefficient(0.5, 1.0), 1.0, 0);
  EXPECT(std::isnan(clip_coefficient(nan, 1.0)));
}

static void test_adam() {
  // one step from zero state: m = (1-b1) g, v = (1-b2) g^2, update = lr * g/|g| / (1 + eps')
  const auto h = adam_hyper<double>(0.9, 0.999, 1e-8, 0.0, false, false, false);
  const auto s = adam_step_scalars<double>(h, 0.1, 1.0);
  double p = 1.0, m = 0, v = 0, vmax = 0;
  adam_update(p, 2.0, m, v, vmax, false, h, s);
  EXPECT_NEAR(m, 0.2, 1e-15);
  EXPECT_NEAR(v, 0.004, 1e-15);
  EXPECT_NEAR(p, 1.0 - 0.1 * (0.2 / 0.1) / (std::sqrt(0.004) / std::sqrt(0.001) + 1e-8), 1e-14);
  // AdamW decays p before the step; Adam adds wd*p to g; maximize flips g
  const auto hw = adam_hyper<double>(0.9, 0.999, 1e-8, 0.5, false, false, true);
  p = 2.0, m = v = 0;
  adam_update(p, 0.0, m, v, vmax, false, hw, adam_step_scalars<double>(hw, 0.1, 1.0));
  EXPECT_NEAR(p, 2.0 * (1.0 - 0.1 * 0.5), 1e-15);  // torch's p *= 1 - lr*wd
  const auto hl = adam_hyper<double>(0.9, 0.999, 1e-8, 0.5, false, true, false);
  p = 2.0, m = v = 0;
  adam_update(p, 1.0, m, v, vmax, false, hl, adam_step_scalars<double>(hl, 0.1, 1.0));
  EXPECT_NEAR(m, 0.1 * (-1.0 + 0.5 * 2.0), 1e-15);  // maximize, then + wd*p
  // amsgrad keeps the max of v
  const auto ha = adam_hyper<double>(0.9, 0.999, 1e-8, 0.0, true, false, false);
  p = 0, m = 0, v = 0, vmax = 5.0;
  adam_update(p, 1.0, m, v, vmax, true, ha, s);
  EXPECT_NEAR(vmax, 5.0, 0);
  // no weight decay, an inf param: torch leaves the p term out (0 * inf would be NaN)
  p = std::numeric_limits<double>::infinity(), m = v = 0;
  adam_update(p, 1.0, m, v, vmax, false, h, s);
  EXPECT(std::isinf(p) && std::isfinite(v));
  EXPECT_NEAR(m, 0.1, 1e-15);
  // AdamW at weight_decay 0 does not decay, whatever lr is (1 - inf * 0 would be NaN)
  const auto hw0 = adam_hyper<double>(0.9, 0.999, 1e-8, 0.0, false, false, true);
  EXPECT_NEAR(adam_step_scalars<double>(hw0, std::numeric_limits<double>::infinity(), 1.0).param_decay,
              1.0, 0);
}

static void test_sgd_and_lars() {
  MomentumHyper<double> mh{0.9, 0.1, false};
  EXPECT_NEAR(momentum_buffer(2.0, 123.0, mh, true), 2.0, 0);  // first step: buf = d
  EXPECT_NEAR(momentum_buffer(1.0, 2.0, mh, false), 0.9 * 2.0 + 0.9 * 1.0, 1e-15);
  EXPECT_NEAR(momentum_direction(1.0, 2.7, mh), 2.7, 0);
  MomentumHyper<double> nest{0.9, 0.0, true};
  const double buf = momentum_buffer(1.0, 1.0, nest, false);
  EXPECT_NEAR(buf, 1.9, 1e-15);
  EXPECT_NEAR(momentum_direction(1.0, buf, nest), 1.0 + 0.9 * 1.9, 1e-15);
  EXPECT_NEAR(sgd_direction(2.0, 1.0, 0.1, -1.0), -1.0 + 0.2, 1e-15);
  // LARS: r = tc ||p|| / (||g|| + wd ||p|| + eps); 1 when a norm is 0; trust_clip: min(r/lr, 1)
  EXPECT_NEAR(lars_trust_ratio(2.0, 3.0, 0.001, 0.1, 0.0, 1.0, true, false), 0.002 / 3.2, 1e-15);
  EXPECT_NEAR(lars_trust_ratio(0.0, 3.0, 0.001, 0.1, 0.0, 1.0, true, false), 1.0, 0);
  EXPECT_NEAR(lars_trust_ratio(2.0, 0.0, 0.001, 0.1, 0.0, 0.5, true, true), 1.0, 0);
  EXPECT_NEAR(lars_trust_ratio(2.0, 3.0, 0.001, 0.1, 0.0, 0.01, true, true), (0.002 / 3.2) / 0.01, 1e-14);
  EXPECT_NEAR(lars_trust_ratio(2.0, 3.0, 0.001, 0.1, 0.0, 1.0, false, false), 1.0, 0);
  EXPECT_NEAR(lars_direction(2.0, 1.0, 0.1, 0.5, true), (1.0 + 0.2) * 0.5, 1e-15);
  EXPECT_NEAR(lars_direction(2.0, 1.0, 0.1, 0.5, false), 1.0, 0);
  // weight decay 0 leaves an inf param out of the direction (torch's and timm's `if wd`)
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_NEAR(sgd_direction(inf, 1.0, 0.0, 1.0), 1.0, 0);
  EXPECT_NEAR(lars_direction(inf, 1.0, 0.0, 0.5, true), 0.5, 0);
  // trust_clip keeps a NaN ratio NaN (min(nan, 1) is nan in the reference)
  EXPECT(std::isnan(lars_trust_ratio(inf, 3.0, 0.001, 0.1, 0.0, 1.0, true, true)));
  // eps counts where ||g|| + wd ||p|| is small: ||g|| = 1e-9, eps = 1e-8 (without eps the
  // ratio would be 0.002 / 1e-9 = 2e6, eleven times this one)
  EXPECT_NEAR(lars_trust_ratio(2.0, 1e-9, 0.001, 0.0, 1e-8, 1.0, true, false),
              0.002 / (1e-9 + 1e-8), 1e-9);
  // and in float, as the kernels compute it
  EXPECT_NEAR(lars_trust_ratio(2.0f, 1e-6f, 0.02f, 0.0f, 1e-3f, 1.0f, true, false),
              0.04 / (1e-6 + 1e-3), 1e-6 * (0.04 / 1e-3));
}

static void test_lamb() {
  const auto h = lamb_hyper<double>(0.9, 0.999, true, 1e-6, 0.01);
  double m = 0, v = 0;
  lamb_moments(2.0, m, v, h);
  EXPECT_NEAR(m, 0.2, 1e-15);
  EXPECT_NEAR(v, 0.004, 1e-15);
  const auto s = lamb_step_scalars<double>(h, 1.0, true);
  EXPECT_NEAR(s.inv_bias_correction1, 10.0, 1e-13);
  EXPECT_NEAR(s.inv_sqrt_bias_correction2, 1.0 / std::sqrt(0.001), 1e-12);
  const double u = lamb_direction(3.0, m, v, h, s);
  EXPECT_NEAR(u, (0.2 / 0.1) / (std::sqrt(0.004 / 0.001) + 1e-6) + 0.01 * 3.0, 1e-14);
  // grad_averaging=false: m <- beta1 m + g (not (1 - beta1) g); v is unchanged by it
  const auto nga = lamb_hyper<double>(0.9, 0.999, false, 1e-6, 0.01);
  EXPECT_NEAR(nga.grad_coef, 1.0, 0);
  double mn = 0.5, vn = 0.25;
  lamb_moments(2.0, mn, vn, nga);
  EXPECT_NEAR(mn, 0.9 * 0.5 + 2.0, 1e-15);
  EXPECT_NEAR(vn, 0.999 * 0.25 + 0.001 * 4.0, 1e-15);
  const auto ngaf = lamb_hyper<float>(0.8, 0.99, false, 1e-3, 0.0);
  float mnf = 1.0f, vnf = 0.0f;
  lamb_moments(3.0f, mnf, vnf, ngaf);
  EXPECT_NEAR(mnf, 0.8 * 1.0 + 3.0, 1e-6);
  const auto off = lamb_step_scalars<double>(h, 5.0, false);
  EXPECT_NEAR(off.inv_bias_correction1, 1.0, 0);
  EXPECT_NEAR(off.inv_sqrt_bias_correction2, 1.0, 0);
  EXPECT_NEAR(lamb_trust_ratio(4.0, 2.0, true, false), 2.0, 0);
  EXPECT_NEAR(lamb_trust_ratio(4.0, 2.0, true, true), 1.0, 0);
  EXPECT_NEAR(lamb_trust_ratio(0.0, 2.0, true, false), 1.0, 0);
  EXPECT_NEAR(lamb_trust_ratio(4.0, 0.0, true, false), 1.0, 0);
  EXPECT_NEAR(lamb_trust_ratio(4.0, 2.0, false, false), 1.0, 0);
  // float computes the same formula
  const auto hf = lamb_hyper<float>(0.9, 0.999, true, 1e-6, 0.01);
  float mf = 0, vf = 0;
  lamb_moments(2.0f, mf, vf, hf);
  EXPECT_NEAR(mf, 0.2, 1e-6);
  // the float coefficients are the double ones rounded once: 1 - 0.999 in float32 arithmetic
  // is 0.00099998713, 1.3e-5 off
  EXPECT_NEAR(vf, float(0.001) * 4.0f, 0);
  const auto af = adam_hyper<float>(0.9, 0.999, 1e-8, 0.0, false, false, false);
  float pa = 1.0f, ma = 0, va = 0, vmaxa = 0;
  adam_update(pa, 2.0f, ma, va, vmaxa, false, af, adam_step_scalars<float>(af, 0.1, 1.0));
  EXPECT_NEAR(va, float(0.001) * 4.0f, 0);
  EXPECT_NEAR(ma, float(0.1) * 2.0f, 0);
}

// The CUDA kernels build the hyperparameters without beta1 and set it from the value they
// read on the device: the result must be the host's hyperparameters exactly.
static void test_beta1_set_on_the_device() {
  for (double b1 : {0.0, 0.85, 0.9, 0.95}) {
    for (bool averaging : {true, false}) {
      const auto host = lamb_hyper<float>(b1, 0.999, averaging, 1e-6, 0.01);
      const auto dev = lamb_with_beta1(lamb_hyper<float>(0.0, 0.999, averaging, 1e-6, 0.01), b1,
                                       averaging);
      EXPECT_NEAR(dev.beta1, host.beta1, 0);
      EXPECT_NEAR(dev.grad_coef, host.grad_coef, 0);
      EXPECT_NEAR(dev.beta1_exact, host.beta1_exact, 0);
    }
    const auto ahost = adam_hyper<float>(b1, 0.999, 1e-8, 0.0, false, false, true);
    const auto adev = adam_with_beta1(adam_hyper<float>(0.0, 0.999, 1e-8, 0.0, false, false, true), b1);
    EXPECT_NEAR(adev.beta1, ahost.beta1, 0);
    EXPECT_NEAR(adev.one_minus_beta1, ahost.one_minus_beta1, 0);
    EXPECT_NEAR(adev.beta1_exact, ahost.beta1_exact, 0);
  }
}

int main() {
  test_norm();
  test_adam();
  test_sgd_and_lars();
  test_lamb();
  test_beta1_set_on_the_device();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("math headers: all checks passed\n");
  return 0;
}
