// Element conversions for the CPU loops. c10's own bfloat16 rounding branches on NaN and
// its half conversion is a scalar F16C instruction; either kept GCC from vectorizing a
// loop (a bf16 AdamW step ran scalar; an fp16 one took 7x torch's fused AdamW). These are
// branch-free integer and float operations that GCC vectorizes, and give c10's results
// (round to nearest even; NaN -> a quiet NaN; checked over every half and a sweep of the
// floats in csrc/tests/test_convert.cpp).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastdyn {
namespace cpu {

inline float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t bits_of_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// IEEE half -> float, exact. Normal halves: the exponent is rebiased (15 -> 127) by an
// integer add; inf/NaN keep an all-ones exponent; subnormals (and zero) are m * 2^-24,
// formed as (0.5 + m * 2^-24) - 0.5 so that no float subnormal (flushed under DAZ) occurs.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h) & 0x7fffu;
  const uint32_t normal = (magnitude << 13) + (112u << 23);
  const uint32_t inf_nan = (magnitude << 13) | 0x7f800000u;
  const uint32_t subnormal = bits_of_float(float_from_bits(magnitude | (126u << 23)) - 0.5f);
  const uint32_t bits = magnitude >= 0x7c00u ? inf_nan : (magnitude < 0x0400u ? subnormal : normal);
  return float_from_bits(sign | bits);
}

// float -> IEEE half, round to nearest even. Adding a power of two that places the half's
// last kept bit at the float's last bit makes the FPU do the rounding; that power is
// 2^(e+13) for a normal result and fixed (2^-1 below the smallest half normal's exponent)
// for subnormal ones. Scaling |f| by 2^112 then 2^-110 first turns what overflows a half
// into infinity. NaN becomes the quiet NaN 0x7e00 (with its sign).
inline uint16_t float_to_half_bits(float f) {
  const uint32_t w = bits_of_float(f);
  const uint32_t sign = (w >> 16) & 0x8000u;
  const uint32_t twice = w + w;  // the sign shifted out: exponent in the top byte
  uint32_t bias = twice & 0xff000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const float scaled = (std::fabs(f) * 0x1p112f) * 0x1p-110f;
  const uint32_t rounded = bits_of_float(float_from_bits((bias >> 1) + 0x07800000u) + scaled);
  const uint32_t magnitude = ((rounded >> 13) & 0x7c00u) + (rounded & 0x0fffu);
  return static_cast<uint16_t>(sign | (twice > 0xff000000u ? 0x7e00u : magnitude));
}

template <typename A, typename T>
inline A load(T x) {
  return static_cast<A>(x);
}
template <>
inline float load<float, c10::BFloat16>(c10::BFloat16 x) {
  return float_from_bits(static_cast<uint32_t>(x.x) << 16);
}
template <>
inline float load<float, c10::Half>(c10::Half x) {
  return half_bits_to_float(x.x);
}

template <typename T, typename A>
inline T store(A x) {
  return static_cast<T>(x);
}
template <>
inline c10::BFloat16 store<c10::BFloat16, float>(float f) {
  const uint32_t u = bits_of_float(f);
  const uint32_t rounded = (u + UINT32_C(0x7FFF) + ((u >> 16) & 1u)) >> 16;
  const uint32_t bits = (f != f) ? UINT32_C(0x7FC0) : rounded;
  return c10::BFloat16(static_cast<uint16_t>(bits), c10::BFloat16::from_bits());
}
template <>
inline c10::Half store<c10::Half, float>(float f) {
  return c10::Half(float_to_half_bits(f), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace fastdyn
