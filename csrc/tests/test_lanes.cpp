// The CPU loops' sixteen-lane path (csrc/include/fastdyn/cpu/lanes.h) against their
// one-element path: Lanes16 loads and stores, in both lane orders, of every half and
// bfloat16 and of floats swept across every exponent and rounding residue give convert.h's
// bits in element order; the math headers run on the lanes give the float results (to an
// FMA's rounding). Exits 77 (ctest: skipped) where the machine lacks AVX2/FMA/F16C or the
// build did not enable them.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "check.h"
#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/math/adam.h"
#include "fastdyn/math/lamb.h"
#include "fastdyn/math/norm.h"
#include "fastdyn/math/sgd.h"

#if FASTDYN_CPU_LANES
using namespace fastdyn::cpu;
namespace math = fastdyn::math;

constexpr int kW = static_cast<int>(kLanesWidth);

static bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits_of_float(a) == bits_of_float(b);
}

static bool is_half_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }

template <typename T>
static T from_bits(uint16_t bits) {
  return T(bits, T::from_bits());
}

// Sixteen 16-bit values from consecutive bit patterns, loaded as lanes L and stored as
// floats (element order), against convert.h's load; and floats through L into fp32.
template <typename L, typename T>
static void test_loads() {
  for (uint32_t base = 0; base <= 0xffffu; base += kW) {
    T in[kW];
    for (int j = 0; j < kW; ++j) in[j] = from_bits<T>(static_cast<uint16_t>(base + j));
    float out[kW], back[kW];
    store_lanes(out, load_lanes<L>(in));
    store_lanes(back, load_lanes<L>(out));  // float load and store: the identity
    for (int j = 0; j < kW; ++j) {
      EXPECT(same_float(out[j], load<float>(in[j])));
      EXPECT(same_float(back[j], out[j]));
    }
    if (failures > 20) return;
  }
}

// Stores of the floats with these bit patterns, through lanes L, against convert.h's.
template <typename L, typename T>
static void check_stores(const uint32_t* words) {
  float f[kW];
  for (int j = 0; j < kW; ++j) f[j] = float_from_bits(words[j]);
  T out[kW];
  store_lanes(out, load_lanes<L>(f));
  for (int j = 0; j < kW; ++j) {
    const uint16_t ours = out[j].x, one = store<T>(f[j]).x;
    if constexpr (std::is_same_v<T, c10::Half>) {
      // a NaN stays a NaN of the same sign; its payload is F16C's
      EXPECT(std::isnan(f[j]) ? is_half_nan(ours) && (ours & 0x8000u) == (one & 0x8000u) : ours == one);
    } else {
      EXPECT(ours == one);
    }
  }
}

static void test_stores() {
  uint32_t words[kW];
  int k = 0;
  auto push = [&](uint32_t w) {
    words[k++] = w;
    if (k == kW) {
      if (failures <= 20) {
        check_stores<Lanes16<true>, c10::BFloat16>(words);
        check_stores<Lanes16<true>, c10::Half>(words);
        check_stores<Lanes16<false>, c10::Half>(words);
      }
      k = 0;
    }
  };
  // stride 8191 (odd: every residue of the low 16 bits comes up) over all floats, then
  // floats of the exponents where halves turn subnormal or overflow, and inf/NaN
  for (uint64_t w = 0; w <= 0xffffffffull; w += 8191) push(static_cast<uint32_t>(w));
  for (uint32_t exponent : {101u, 102u, 112u, 113u, 142u, 143u, 255u}) {
    for (uint32_t sign : {0u, 1u}) {
      for (uint32_t m = 0; m < (1u << 23); m += 3) push((sign << 31) | (exponent << 23) | m);
    }
  }
}

// nan_max and fabs_ on every pair of special values, against the scalar templates.
template <typename L>
static void test_selects() {
  const float nan = std::nanf(""), inf = INFINITY;
  const float specials[8] = {nan, -inf, -1.0f, -0.0f, 0.0f, 1.0f, inf, -nan};
  float values[kW];
  for (int j = 0; j < kW; ++j) values[j] = specials[j % 8];
  for (float a : specials) {
    float out[kW], abs_out[kW];
    store_lanes(out, nan_max(L(a), load_lanes<L>(values)));
    store_lanes(abs_out, fabs_(load_lanes<L>(values)));
    for (int j = 0; j < kW; ++j) {
      EXPECT(same_float(out[j], math::nan_max(a, values[j])));
      EXPECT(same_float(abs_out[j], math::fabs_(values[j])));
      EXPECT(!std::signbit(math::fabs_(values[j])) || std::isnan(values[j]));
    }
  }
}

// The math headers on the lanes against the same calls on floats, element by element: the
// same operations in the same order, and multiply-adds fused only where a header writes
// math::fmadd (the build fuses none of its own, -ffp-contract=off), so the same bits. Before
// that flag GCC fused v = b2*v + (1-b2)*g*g in one path and not the other: an ulp apart.
template <typename L>
static void test_math_lanes() {
  int64_t mismatches = 0;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto ah = math::adam_hyper<float>(0.9, 0.999, 1e-8, 0.01, true, false, true);
  const auto as = math::adam_step_scalars<float>(ah, 1e-3, 7.0);
  const math::MomentumHyper<float> mh{0.9f, 0.1f, true};
  const auto lh = math::lamb_hyper<float>(0.9, 0.999, true, 1e-6, 0.01);
  const auto ls = math::lamb_step_scalars<float>(lh, 5.0, true);
  for (int round = 0; round < 1000; ++round) {
    float p[kW], g[kW], m[kW], v[kW], vmax[kW];
    for (int j = 0; j < kW; ++j) {
      p[j] = normal(rng);
      g[j] = normal(rng) * 1e-2f;
      m[j] = normal(rng) * 1e-3f;
      v[j] = std::fabs(normal(rng)) * 1e-5f;
      vmax[j] = std::fabs(normal(rng)) * 1e-5f;
    }
    if (round == 0) g[3] = std::nanf("");  // NaN propagates the same way through both
    L P = load_lanes<L>(p), M = load_lanes<L>(m), V = load_lanes<L>(v), VM = load_lanes<L>(vmax);
    const L G = load_lanes<L>(g);
    math::adam_update(P, G, M, V, VM, true, ah, as);
    const L B = math::momentum_buffer(G, load_lanes<L>(m), mh, false);
    const L D = math::momentum_direction(G, B, mh) + math::sgd_direction(G, G, 0.1f, -1.0f);
    const L U = math::lamb_direction(load_lanes<L>(p), load_lanes<L>(m), load_lanes<L>(v), lh, ls);
    const L N = math::norm_accumulate<math::NormKind::Inf>(load_lanes<L>(vmax), G);
    const L S = math::norm_accumulate<math::NormKind::L2>(load_lanes<L>(vmax), G);
    float out[8][kW];
    store_lanes(out[0], P);
    store_lanes(out[1], M);
    store_lanes(out[2], V);
    store_lanes(out[3], VM);
    store_lanes(out[4], D);
    store_lanes(out[5], U);
    store_lanes(out[6], N);
    store_lanes(out[7], S);
    for (int j = 0; j < kW; ++j) {
      float pj = p[j], mj = m[j], vj = v[j], vmj = vmax[j];
      math::adam_update(pj, g[j], mj, vj, vmj, true, ah, as);
      const float bj = math::momentum_buffer(g[j], m[j], mh, false);
      const float dj = math::momentum_direction(g[j], bj, mh) + math::sgd_direction(g[j], g[j], 0.1f, -1.0f);
      const float uj = math::lamb_direction(p[j], m[j], v[j], lh, ls);
      const float nj = math::norm_accumulate<math::NormKind::Inf>(vmax[j], g[j]);
      const float sj = math::norm_accumulate<math::NormKind::L2>(vmax[j], g[j]);
      const float scalar[8] = {pj, mj, vj, vmj, dj, uj, nj, sj};
      for (int k = 0; k < 8; ++k) {
        EXPECT(same_float(out[k][j], scalar[k]));
        mismatches += !same_float(out[k][j], scalar[k]);
      }
    }
    if (failures > 20) break;
  }
  // the L2 accumulation is one fused multiply-add: one rounding of acc + x*x
  const float x = 1.0f + std::ldexp(1.0f, -12), acc = -1.0f;
  EXPECT(math::norm_accumulate<math::NormKind::L2>(acc, x) == std::fma(x, x, acc));
  EXPECT(math::norm_accumulate<math::NormKind::L2>(acc, x) != x * x + acc);
  std::printf("test_lanes: lane math and float math differ in %lld values\n",
              static_cast<long long>(mismatches));
}

// sum_squares_double (lane_sums.h) against a one-element double loop: values whose float
// squares overflow (1e30) or vanish (1e-30) keep their squares, for every input type and
// for lengths on both sides of the sixteen-element groups. Lane sums add in another order:
// equal to a few ulps of double.
template <typename T>
static void test_sum_squares_double() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float magnitude : {1e30f, 1e-30f, 1.0f}) {
    for (int64_t n : {0, 1, 15, 16, 17, 33, 1000}) {
      std::vector<T> x(static_cast<size_t>(n));
      double expected = 0.0;
      for (auto& v : x) {
        v = static_cast<T>(normal(rng) * (std::is_same_v<T, c10::Half> ? 1.0f : magnitude));
        const double d = static_cast<double>(static_cast<float>(v));
        expected += d * d;
      }
      const double got = sum_squares_double(x.data(), n);
      EXPECT(std::isfinite(got));
      EXPECT(n == 0 || got > 0.0);
      EXPECT(std::fabs(got - expected) <= 1e-14 * expected);
    }
  }
}

int main() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !__builtin_cpu_supports("f16c")) {
    std::printf("test_lanes: skipped, this CPU lacks AVX2/FMA/F16C\n");
    return 77;
  }
  test_loads<Lanes16<true>, c10::BFloat16>();
  test_loads<Lanes16<true>, c10::Half>();
  test_loads<Lanes16<false>, c10::Half>();
  test_stores();
  test_selects<Lanes16<true>>();
  test_selects<Lanes16<false>>();
  test_math_lanes<Lanes16<true>>();
  test_math_lanes<Lanes16<false>>();
  test_sum_squares_double<float>();
  test_sum_squares_double<double>();
  test_sum_squares_double<c10::Half>();
  test_sum_squares_double<c10::BFloat16>();
  std::printf("test_lanes: %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
#else
int main() {
  std::printf("test_lanes: skipped, built without AVX2/FMA/F16C (no Lanes16 path)\n");
  return 77;
}
#endif
