// The CPU loops' eight-lane path (csrc/include/fastdyn/cpu/vec8.h) against their one-element
// path: Vec8 loads and stores of every half and bfloat16, and of floats swept across every
// exponent and rounding residue, give convert.h's bits; the math headers run on Vec8 lanes
// give the float results (to an FMA's rounding). Exits 77 (ctest: skipped) where the machine lacks
// AVX2/FMA/F16C or the build did not enable them.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>

#include "check.h"
#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/vec8.h"
#include "fastdyn/math/adam.h"
#include "fastdyn/math/lamb.h"
#include "fastdyn/math/norm.h"
#include "fastdyn/math/sgd.h"

#if FASTDYN_CPU_VEC8
using namespace fastdyn::cpu;
namespace math = fastdyn::math;

static bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits_of_float(a) == bits_of_float(b);
}

// Units in the last place between two floats of the same sign (0 for two NaNs).
static int64_t ulps(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0 : INT64_MAX;
  if ((bits_of_float(a) ^ bits_of_float(b)) >> 31) return a == b ? 0 : INT64_MAX;
  const int64_t d = static_cast<int64_t>(bits_of_float(a)) - static_cast<int64_t>(bits_of_float(b));
  return d < 0 ? -d : d;
}

template <typename T>
static T from_bits(uint16_t bits) {
  return T(bits, T::from_bits());
}

// Eight 16-bit values from consecutive bit patterns through Vec8 against convert.h's load.
template <typename T>
static void test_loads() {
  for (uint32_t base = 0; base <= 0xffffu; base += 8) {
    T in[8];
    for (int j = 0; j < 8; ++j) in[j] = from_bits<T>(static_cast<uint16_t>(base + j));
    float out[8];
    lanes_to_floats(load_lanes<Vec8>(in), out);
    for (int j = 0; j < 8; ++j) EXPECT(same_float(out[j], load<float>(in[j])));
    if (failures > 20) return;
  }
}

static bool is_half_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }

// Stores of the floats with these bit patterns (eight at a time) against convert.h's.
static void check_stores(const uint32_t* words) {
  float f[8];
  for (int j = 0; j < 8; ++j) f[j] = float_from_bits(words[j]);
  const Vec8 x = load_lanes<Vec8>(f);
  c10::Half h[8];
  c10::BFloat16 b[8];
  store_lanes(h, x);
  store_lanes(b, x);
  for (int j = 0; j < 8; ++j) {
    const uint16_t half = store<c10::Half>(f[j]).x;
    // a NaN stays a NaN of the same sign; its payload is F16C's
    EXPECT(std::isnan(f[j]) ? is_half_nan(h[j].x) && (h[j].x & 0x8000u) == (half & 0x8000u)
                            : h[j].x == half);
    EXPECT(b[j].x == store<c10::BFloat16>(f[j]).x);
  }
}

static void test_stores() {
  uint32_t words[8];
  int k = 0;
  auto push = [&](uint32_t w) {
    words[k++] = w;
    if (k == 8) {
      if (failures <= 20) check_stores(words);
      k = 0;
    }
  };
  // stride 8191 (odd: every residue of the low 16 bits comes up) over all floats, then
  // every float of the exponents where halves turn subnormal or overflow
  for (uint64_t w = 0; w <= 0xffffffffull; w += 8191) push(static_cast<uint32_t>(w));
  for (uint32_t exponent : {101u, 102u, 112u, 113u, 142u, 143u, 255u}) {
    for (uint32_t sign : {0u, 1u}) {
      for (uint32_t m = 0; m < (1u << 23); m += 3) push((sign << 31) | (exponent << 23) | m);
    }
  }
}

// The math headers on Vec8 lanes against the same calls on floats, lane by lane: the same
// operations, but GCC fuses a multiply and an add into an FMA in one and not always in the
// other (measured: v = b2*v + (1-b2)*g*g differs by an ulp), so arithmetic results agree
// to kMaxUlps; selects (nan_max, |x|) exactly.
static void test_math_lanes() {
  constexpr int64_t kMaxUlps = 2;
  int64_t worst = 0;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const math::AdamHyper<float> ah{0.9f, 0.999f, 1e-8f, 0.01f, true, false, true};
  const auto as = math::adam_step_scalars<float>(ah, 1e-3f, 7.0f);
  const math::MomentumHyper<float> mh{0.9f, 0.1f, true};
  const math::LambHyper<float> lh{0.9f, 0.999f, 0.1f, 1e-6f, 0.01f};
  const auto ls = math::lamb_step_scalars<float>(lh, 5.0f, true);
  for (int round = 0; round < 1000; ++round) {
    float p[8], g[8], m[8], v[8], vmax[8];
    for (int j = 0; j < 8; ++j) {
      p[j] = normal(rng);
      g[j] = normal(rng) * 1e-2f;
      m[j] = normal(rng) * 1e-3f;
      v[j] = std::fabs(normal(rng)) * 1e-5f;
      vmax[j] = std::fabs(normal(rng)) * 1e-5f;
    }
    if (round == 0) g[3] = std::nanf("");  // NaN propagates the same way through both
    Vec8 P = load_lanes<Vec8>(p), M = load_lanes<Vec8>(m), V = load_lanes<Vec8>(v),
         VM = load_lanes<Vec8>(vmax);
    const Vec8 G = load_lanes<Vec8>(g);
    math::adam_update(P, G, M, V, VM, true, ah, as);
    const Vec8 B = math::momentum_buffer(G, load_lanes<Vec8>(m), mh, false);
    const Vec8 D = math::momentum_direction(G, B, mh) + math::sgd_direction(G, G, 0.1f, -1.0f);
    const Vec8 U = math::lamb_direction(load_lanes<Vec8>(p), load_lanes<Vec8>(m),
                                        load_lanes<Vec8>(v), lh, ls);
    const Vec8 N = math::norm_accumulate<math::NormKind::Inf>(load_lanes<Vec8>(vmax), G);
    float out[6][8];
    lanes_to_floats(P, out[0]);
    lanes_to_floats(M, out[1]);
    lanes_to_floats(VM, out[2]);
    lanes_to_floats(D, out[3]);
    lanes_to_floats(U, out[4]);
    lanes_to_floats(N, out[5]);
    for (int j = 0; j < 8; ++j) {
      float pj = p[j], mj = m[j], vj = v[j], vmj = vmax[j];
      math::adam_update(pj, g[j], mj, vj, vmj, true, ah, as);
      const float bj = math::momentum_buffer(g[j], m[j], mh, false);
      const float dj = math::momentum_direction(g[j], bj, mh) + math::sgd_direction(g[j], g[j], 0.1f, -1.0f);
      const float uj = math::lamb_direction(p[j], m[j], v[j], lh, ls);
      const float nj = math::norm_accumulate<math::NormKind::Inf>(vmax[j], g[j]);
      for (const auto& [lane, scalar] : {std::pair{out[0][j], pj}, std::pair{out[1][j], mj},
                                         std::pair{out[2][j], vmj}, std::pair{out[3][j], dj},
                                         std::pair{out[4][j], uj}}) {
        EXPECT(ulps(lane, scalar) <= kMaxUlps);
        worst = std::max(worst, ulps(lane, scalar));
      }
      EXPECT(same_float(out[5][j], nj));
    }
    if (failures > 20) break;
  }
  std::printf("test_vec8: Vec8 math within %lld ulp of the float math\n", static_cast<long long>(worst));
}

// nan_max and fabs_ on every pair of special values, against the scalar templates.
static void test_selects() {
  const float nan = std::nanf(""), inf = INFINITY;
  const float values[8] = {nan, -inf, -1.0f, -0.0f, 0.0f, 1.0f, inf, -nan};
  for (float a : values) {
    float as[8], out[8], abs_out[8];
    for (int j = 0; j < 8; ++j) as[j] = a;
    lanes_to_floats(nan_max(load_lanes<Vec8>(as), load_lanes<Vec8>(values)), out);
    lanes_to_floats(fabs_(load_lanes<Vec8>(values)), abs_out);
    for (int j = 0; j < 8; ++j) {
      EXPECT(same_float(out[j], math::nan_max(a, values[j])));
      // (the scalar fabs_ keeps -0.0 as it is; Vec8 clears the sign: the same for a norm)
      EXPECT(same_float(abs_out[j], math::fabs_(values[j])) || values[j] == 0.0f);
    }
  }
}

int main() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !__builtin_cpu_supports("f16c")) {
    std::printf("test_vec8: skipped, this CPU lacks AVX2/FMA/F16C\n");
    return 77;
  }
  test_loads<c10::Half>();
  test_loads<c10::BFloat16>();
  test_stores();
  test_selects();
  test_math_lanes();
  std::printf("test_vec8: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
#else
int main() {
  std::printf("test_vec8: skipped, built without AVX2/FMA/F16C (no Vec8 path)\n");
  return 77;
}
#endif
