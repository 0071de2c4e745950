// Eight float lanes in an AVX2 register, for the CPU loops over 16-bit arrays. GCC 12 does
// not vectorize half conversions at all and converts bfloat16 with a pack and a permute per
// store, so those loops are written over Vec8 explicitly: F16C's 8-wide vcvtph2ps/vcvtps2ph,
// a shift for bfloat16 loads and an integer rounding for its stores. The per-element math
// headers (csrc/include/fastdyn/math) run unchanged on Vec8, whose operators are the
// float ones lane by lane (GCC may fuse a multiply-add in one and not the other: the lanes
// agree with the one-element path to an ulp; conversions exactly; csrc/tests/test_vec8.cpp).
// The loops before this converted each 16-bit array of a 2,048-element block into an fp32
// scratch buffer first; that extra pass through L1 (and a hardware-prefetch restart on every
// 4 KiB block) held fp16 AdamW to 0.53x torch's fused one on 32M parameters.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/macros.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FASTDYN_CPU_VEC8 1
#else
#define FASTDYN_CPU_VEC8 0
#endif

namespace fastdyn {
namespace cpu {

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Whether a loop over arrays of these element types runs on Vec8 groups: when one of them
// is 16-bit (fp32 and fp64 loops are left to GCC's vectorizer, which handles them well).
template <typename... T>
constexpr bool kVec8Loop = FASTDYN_CPU_VEC8 && (kIs16Bit<T> || ...);

// Elements per Vec8 group.
constexpr int64_t kVec8Width = 8;

#if FASTDYN_CPU_VEC8

struct Vec8 {
  __m256 v;
  Vec8() = default;
  // Implicit from a float (all lanes): the math headers write T(1) and mix hyperparameters
  // (floats) with lane values.
  FASTDYN_HD Vec8(float x) : v(_mm256_set1_ps(x)) {}
  FASTDYN_HD explicit Vec8(__m256 x) : v(x) {}
};

FASTDYN_HD Vec8 operator+(Vec8 a, Vec8 b) { return Vec8(_mm256_add_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator-(Vec8 a, Vec8 b) { return Vec8(_mm256_sub_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator*(Vec8 a, Vec8 b) { return Vec8(_mm256_mul_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator/(Vec8 a, Vec8 b) { return Vec8(_mm256_div_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator-(Vec8 a) { return Vec8(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))); }
FASTDYN_HD Vec8& operator+=(Vec8& a, Vec8 b) { return a = a + b; }
FASTDYN_HD Vec8& operator-=(Vec8& a, Vec8 b) { return a = a - b; }
FASTDYN_HD Vec8& operator*=(Vec8& a, Vec8 b) { return a = a * b; }

// Found by argument-dependent lookup from the math headers' unqualified calls.
FASTDYN_HD Vec8 fsqrt(Vec8 a) { return Vec8(_mm256_sqrt_ps(a.v)); }
FASTDYN_HD Vec8 fabs_(Vec8 a) { return Vec8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)); }
// math::nan_max lane by lane: a where a is NaN or a > b, else b.
FASTDYN_HD Vec8 nan_max(Vec8 a, Vec8 b) {
  const __m256 take_a =
      _mm256_or_ps(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q), _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ));
  return Vec8(_mm256_blendv_ps(b.v, a.v, take_a));
}

// bfloat16 bits (the high halves of 8 floats, as 32-bit lanes) from floats: convert.h's
// store<BFloat16> lane by lane (round to nearest even; NaN -> 0x7FC0).
FASTDYN_HD __m256i bfloat16_bits(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}

#endif  // FASTDYN_CPU_VEC8

// L lanes (float or Vec8) read from p: one element converted by convert.h's load, or eight.
template <typename L, typename T>
FASTDYN_HD L load_lanes(const T* p) {
#if FASTDYN_CPU_VEC8
  if constexpr (std::is_same_v<L, Vec8>) {
    if constexpr (std::is_same_v<T, float>) {
      return Vec8(_mm256_loadu_ps(p));
    } else if constexpr (std::is_same_v<T, c10::Half>) {
      return Vec8(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    } else {
      static_assert(std::is_same_v<T, c10::BFloat16>, "Vec8 lanes load float, half or bfloat16");
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return Vec8(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  } else
#endif
  {
    return load<L>(*p);
  }
}

// Stores lanes x into p (convert.h's store rounding: to nearest even).
template <typename T, typename L>
FASTDYN_HD void store_lanes(T* p, L x) {
#if FASTDYN_CPU_VEC8
  if constexpr (std::is_same_v<L, Vec8>) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_storeu_ps(p, x.v);
    } else if constexpr (std::is_same_v<T, c10::Half>) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
    } else {
      static_assert(std::is_same_v<T, c10::BFloat16>, "Vec8 lanes store float, half or bfloat16");
      const __m256i bits = bfloat16_bits(x.v);
      const __m128i packed =
          _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
    }
  } else
#endif
  {
    *p = store<T>(x);
  }
}

#if FASTDYN_CPU_VEC8
// The eight lanes of x into out[0..7], in order (to flush lane sums).
FASTDYN_HD void lanes_to_floats(Vec8 x, float* out) { _mm256_storeu_ps(out, x.v); }
#endif

}  // namespace cpu
}  // namespace fastdyn
