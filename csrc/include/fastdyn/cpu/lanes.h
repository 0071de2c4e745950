// Lane types of the CPU loops over 16-bit arrays. GCC 12 does not vectorize half
// conversions at all and converts bfloat16 with a pack and a cross-lane permute per store,
// so those loops run on Lanes16 explicitly: sixteen elements as two AVX2 registers of eight
// floats (Vec8), loaded and stored with F16C's vcvtph2ps/vcvtps2ph for fp16 and with an
// unpack in and an integer round-to-nearest-even and a pack out for bf16. The per-element
// math headers (csrc/include/fastdyn/math) run unchanged on the lanes, whose operators are
// the float ones lane by lane (fused multiply-adds only where written, math::fmadd: the lanes
// agree with the one-element path bit for bit; tested in csrc/tests/test_lanes.cpp).
// Measured on the development machine (Zen 3, one thread, in cache): the loops before
// converted each fp16 array of a 2,048-element block into an fp32 scratch buffer first, which
// held fp16 AdamW to 0.53x torch's fused one on 32M parameters (1.13x on eight lanes). bf16
// AdamW ran 0.65 G elem/s on eight lanes in element order and 0.87 on sixteen in bf16 order
// (below): the unpack and the pack need no cross-lane shuffle.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/macros.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FASTDYN_CPU_LANES 1
#else
#define FASTDYN_CPU_LANES 0
#endif

namespace fastdyn {
namespace cpu {

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Elements per Lanes16 group.
constexpr int64_t kLanesWidth = 16;

#if FASTDYN_CPU_LANES

// Eight floats in an AVX2 register.
struct Vec8 {
  __m256 v;
  Vec8() = default;
  FASTDYN_HD Vec8(float x) : v(_mm256_set1_ps(x)) {}
  FASTDYN_HD explicit Vec8(__m256 x) : v(x) {}
};

FASTDYN_HD Vec8 operator+(Vec8 a, Vec8 b) { return Vec8(_mm256_add_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator-(Vec8 a, Vec8 b) { return Vec8(_mm256_sub_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator*(Vec8 a, Vec8 b) { return Vec8(_mm256_mul_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator/(Vec8 a, Vec8 b) { return Vec8(_mm256_div_ps(a.v, b.v)); }
FASTDYN_HD Vec8 operator-(Vec8 a) { return Vec8(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))); }
FASTDYN_HD Vec8 fmadd(Vec8 a, Vec8 b, Vec8 c) { return Vec8(_mm256_fmadd_ps(a.v, b.v, c.v)); }
FASTDYN_HD Vec8 fsqrt(Vec8 a) { return Vec8(_mm256_sqrt_ps(a.v)); }
FASTDYN_HD Vec8 fabs_(Vec8 a) { return Vec8(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)); }
// math::nan_max lane by lane: a where a is NaN or a > b, else b.
FASTDYN_HD Vec8 nan_max(Vec8 a, Vec8 b) {
  const __m256 take_a =
      _mm256_or_ps(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q), _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ));
  return Vec8(_mm256_blendv_ps(b.v, a.v, take_a));
}

// bfloat16 bits of 8 floats, in the low halves of 32-bit lanes: convert.h's
// store<BFloat16> lane by lane (round to nearest even; NaN -> 0x7FC0).
FASTDYN_HD __m256i bfloat16_bits(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}

// Sixteen elements of an array as floats in two Vec8. With kBf16Order, lo holds elements
// 0-3 and 8-11 and hi 4-7 and 12-15: the order in which 16 bfloat16 unpack (and pack back)
// within the 128-bit halves of a register; fp16 and fp32 arrays of such a loop are shuffled
// into it (two permutes per 16). Without, lo is elements 0-7 and hi 8-15. The math is lane
// by lane, so either order computes the same values; the order is fixed per loop by its
// element types (WideLanes, below).
template <bool kBf16Order>
struct Lanes16 {
  Vec8 lo, hi;
  Lanes16() = default;
  // Implicit from a float (all lanes): the math headers write T(1) and mix hyperparameters
  // (floats) with lane values. The operators are hidden friends, so that conversion applies.
  FASTDYN_HD Lanes16(float x) : lo(x), hi(x) {}
  FASTDYN_HD Lanes16(Vec8 l, Vec8 h) : lo(l), hi(h) {}

  friend FASTDYN_HD Lanes16 operator+(Lanes16 a, Lanes16 b) { return {a.lo + b.lo, a.hi + b.hi}; }
  friend FASTDYN_HD Lanes16 operator-(Lanes16 a, Lanes16 b) { return {a.lo - b.lo, a.hi - b.hi}; }
  friend FASTDYN_HD Lanes16 operator*(Lanes16 a, Lanes16 b) { return {a.lo * b.lo, a.hi * b.hi}; }
  friend FASTDYN_HD Lanes16 operator/(Lanes16 a, Lanes16 b) { return {a.lo / b.lo, a.hi / b.hi}; }
  friend FASTDYN_HD Lanes16 operator-(Lanes16 a) { return {-a.lo, -a.hi}; }
  friend FASTDYN_HD Lanes16& operator+=(Lanes16& a, Lanes16 b) { return a = a + b; }
  friend FASTDYN_HD Lanes16& operator-=(Lanes16& a, Lanes16 b) { return a = a - b; }
  // found by argument-dependent lookup from the math headers' unqualified calls
  friend FASTDYN_HD Lanes16 fmadd(Lanes16 a, Lanes16 b, Lanes16 c) {
    return {fmadd(a.lo, b.lo, c.lo), fmadd(a.hi, b.hi, c.hi)};
  }
  friend FASTDYN_HD Lanes16 fsqrt(Lanes16 a) { return {fsqrt(a.lo), fsqrt(a.hi)}; }
  friend FASTDYN_HD Lanes16 fabs_(Lanes16 a) { return {fabs_(a.lo), fabs_(a.hi)}; }
  friend FASTDYN_HD Lanes16 nan_max(Lanes16 a, Lanes16 b) {
    return {nan_max(a.lo, b.lo), nan_max(a.hi, b.hi)};
  }
};

// The wide lane type of a loop over arrays of these element types: Lanes16 when one of them
// is 16-bit (in bf16 order when one is bf16), else void: fp32 and fp64 loops are left to
// GCC's vectorizer, which handles them.
template <typename... T>
using WideLanes = std::conditional_t<(kIs16Bit<T> || ...),
                                     Lanes16<(std::is_same_v<T, c10::BFloat16> || ...)>, void>;

template <typename L>
constexpr bool kIsLanes16 = std::is_same_v<L, Lanes16<true>> || std::is_same_v<L, Lanes16<false>>;

// Elements 0-7 and 8-15 (a, b) from or into bf16 order (lo, hi); one shuffles the other back.
FASTDYN_HD void swap_middle_quarters(__m256& a, __m256& b) {
  const __m256 x = _mm256_permute2f128_ps(a, b, 0x20), y = _mm256_permute2f128_ps(a, b, 0x31);
  a = x;
  b = y;
}

// The 16 lanes of x into out[0..15] in lane order (lo, then hi; to flush lane sums).
template <bool kBf16Order>
FASTDYN_HD void lanes_to_floats(Lanes16<kBf16Order> x, float* out) {
  _mm256_storeu_ps(out, x.lo.v);
  _mm256_storeu_ps(out + 8, x.hi.v);
}

#else
template <typename... T>
using WideLanes = void;  // no wide lanes without AVX2/FMA/F16C: the one-element loops
template <typename L>
constexpr bool kIsLanes16 = false;
#endif  // FASTDYN_CPU_LANES

// L lanes (the compute type for one element, or Lanes16) read from p.
template <typename L, typename T>
FASTDYN_HD L load_lanes(const T* p) {
#if FASTDYN_CPU_LANES
  if constexpr (kIsLanes16<L>) {
    constexpr bool kBf16Order = std::is_same_v<L, Lanes16<true>>;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      static_assert(kBf16Order, "a loop over bfloat16 runs on WideLanes (bf16 order)");
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i zero = _mm256_setzero_si256();
      return {Vec8(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x))),
              Vec8(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x)))};
    } else {
      __m256 a, b;
      if constexpr (std::is_same_v<T, float>) {
        a = _mm256_loadu_ps(p);
        b = _mm256_loadu_ps(p + 8);
      } else {
        static_assert(std::is_same_v<T, c10::Half>, "Lanes16 load float, half or bfloat16");
        a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
      }
      if constexpr (kBf16Order) swap_middle_quarters(a, b);
      return {Vec8(a), Vec8(b)};
    }
  } else
#endif
  {
    return load<L>(*p);
  }
}

// Stores lanes x into p (convert.h's rounding: to nearest even).
template <typename T, typename L>
FASTDYN_HD void store_lanes(T* p, L x) {
#if FASTDYN_CPU_LANES
  if constexpr (kIsLanes16<L>) {
    constexpr bool kBf16Order = std::is_same_v<L, Lanes16<true>>;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      static_assert(kBf16Order, "a loop over bfloat16 runs on WideLanes (bf16 order)");
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                          _mm256_packus_epi32(bfloat16_bits(x.lo.v), bfloat16_bits(x.hi.v)));
    } else {
      __m256 a = x.lo.v, b = x.hi.v;
      if constexpr (kBf16Order) swap_middle_quarters(a, b);
      if constexpr (std::is_same_v<T, float>) {
        _mm256_storeu_ps(p, a);
        _mm256_storeu_ps(p + 8, b);
      } else {
        static_assert(std::is_same_v<T, c10::Half>, "Lanes16 store float, half or bfloat16");
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT));
      }
    }
  } else
#endif
  {
    *p = store<T>(x);
  }
}

// The value a step holds after storing `computed`: the fp32 master's (computed itself) or,
// for a 16-bit param without one, the param as rounded into memory, read back (in L1) so
// that track_stats' ||update|| is the change the step made, not the one it meant.
template <typename P, bool kMaster, typename L>
FASTDYN_HD L held_after(L computed, const P* p, int64_t i) {
  if constexpr (kMaster || !kIs16Bit<P>) {
    return computed;
  } else {
    return load_lanes<L>(p + i);
  }
}

}  // namespace cpu
}  // namespace fastdyn
