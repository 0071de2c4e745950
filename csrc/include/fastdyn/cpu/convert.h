// Element conversions for the CPU loops. c10's own bfloat16 rounding branches on NaN and
// its half conversion is a scalar F16C instruction; either kept GCC from vectorizing a
// loop, so a bf16 AdamW step ran scalar. These are branch-free and bit-identical to c10's
// (round to nearest even; NaN -> quiet NaN).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace fastdyn {
namespace cpu {

template <typename A, typename T>
inline A load(T x) {
  return static_cast<A>(x);
}
template <>
inline float load<float, c10::BFloat16>(c10::BFloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <>
inline float load<float, c10::Half>(c10::Half x) {
  return c10::detail::fp16_ieee_to_fp32_value(x.x);
}

template <typename T, typename A>
inline T store(A x) {
  return static_cast<T>(x);
}
template <>
inline c10::BFloat16 store<c10::BFloat16, float>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + UINT32_C(0x7FFF) + ((u >> 16) & 1u)) >> 16;
  const uint32_t bits = (f != f) ? UINT32_C(0x7FC0) : rounded;
  return c10::BFloat16(static_cast<uint16_t>(bits), c10::BFloat16::from_bits());
}
template <>
inline c10::Half store<c10::Half, float>(float f) {
  return c10::Half(c10::detail::fp16_ieee_from_fp32_value(f), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace fastdyn
