// fastdyn's branch-free half/bfloat16 conversions (csrc/include/fastdyn/cpu/convert.h)
// against c10's: every half, and floats swept across every exponent with all residues of
// the mantissa bits that rounding to half or bfloat16 drops.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdio>

#include "check.h"
#include "fastdyn/cpu/convert.h"

using fastdyn::cpu::bits_of_float;
using fastdyn::cpu::float_from_bits;

static bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits_of_float(a) == bits_of_float(b);
}

static bool is_half_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }

int main() {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const float ours = fastdyn::cpu::load<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    const float theirs = c10::detail::fp16_ieee_to_fp32_value(static_cast<uint16_t>(h));
    EXPECT(same_float(ours, theirs));
    if (failures > 20) break;
  }
  // stride 8191 (odd, so every residue of the low 13 bits comes up) over all 2^32 floats,
  // then every float of the exponents where halves turn subnormal or overflow
  auto check = [](uint32_t w) {
    if (failures > 20) return;  // enough to see what is wrong
    const float f = float_from_bits(w);
    const uint16_t ours = fastdyn::cpu::store<c10::Half>(f).x;
    const uint16_t theirs = c10::detail::fp16_ieee_from_fp32_value(f);
    if (std::isnan(f)) {
      EXPECT(is_half_nan(ours) && (ours & 0x8000u) == (theirs & 0x8000u));
    } else {
      EXPECT(ours == theirs);
    }
    const uint16_t ours_bf = fastdyn::cpu::store<c10::BFloat16>(f).x;
    const uint16_t theirs_bf = c10::BFloat16(f).x;
    EXPECT(std::isnan(f) ? (ours_bf & 0x7fc0u) == 0x7fc0u : ours_bf == theirs_bf);
  };
  for (uint64_t w = 0; w <= 0xffffffffull; w += 8191) check(static_cast<uint32_t>(w));
  for (uint32_t exponent : {101u, 102u, 103u, 112u, 113u, 142u, 143u}) {
    for (uint32_t sign : {0u, 1u}) {
      for (uint32_t m = 0; m < (1u << 23); ++m) check((sign << 31) | (exponent << 23) | m);
    }
  }
  std::printf("test_convert: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
