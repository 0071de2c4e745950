// dtype dispatch for (param, state) pairs: state is the param dtype, or float32 for
// float16/bfloat16 params (fp32 moments, optionally with fp32 master weights).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace fastdyn {

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void dispatch_float(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); return;
    case at::kDouble: f(Tag<double>{}); return;
    case at::kHalf: f(Tag<c10::Half>{}); return;
    case at::kBFloat16: f(Tag<c10::BFloat16>{}); return;
    default: TORCH_CHECK_TYPE(false, name, " has unsupported dtype ", t);
  }
}

template <typename F>
void dispatch_param_state(at::ScalarType param, at::ScalarType state, F&& f) {
  if (state == param) {
    dispatch_float(param, "params", [&](auto p) { f(p, p); });
    return;
  }
  TORCH_CHECK_TYPE(state == at::kFloat && (param == at::kHalf || param == at::kBFloat16),
                   "optimizer state has dtype ", state, " for params of dtype ", param,
                   "; state must match the params, or be float32 for float16/bfloat16 params");
  if (param == at::kHalf) {
    f(Tag<c10::Half>{}, Tag<float>{});
  } else {
    f(Tag<c10::BFloat16>{}, Tag<float>{});
  }
}

// Calls f(master, stats) with std::true_type/std::false_type for two runtime flags, so
// kernels can take them as template parameters (no per-element branch).
template <typename F>
void dispatch_flags(bool master, bool stats, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if (master) {
    stats ? f(T{}, T{}) : f(T{}, N{});
  } else {
    stats ? f(N{}, T{}) : f(N{}, N{});
  }
}

// Compute type of an element type: float for the 16-bit types, the type itself otherwise.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

}  // namespace fastdyn
