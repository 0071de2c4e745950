// Sums over a chunk in independent accumulator lanes. The update loops that summed squares
// (track_stats, LAMB's and LARS's norms) into doubles with an `omp simd reduction` ran at
// 0.4-1.3 G elem/s in cache against 2.9-4.6 without the sums: GCC 12 left some of them
// scalar, and the others waited on one add chain per sum. kLanes lanes of the compute type
// per sum, flushed into doubles every kBlock elements, brought them to 1.6-3.2 (SGD 0.8 ->
// 3.2, LARS 0.6 -> 2.5, LAMB 1.1 -> 1.8). Each lane adds only kBlock / kLanes = 32 values
// before the flush, so float lanes lose nothing that matters.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "fastdyn/cpu/lanes.h"

namespace fastdyn {
namespace cpu {

// 32 float lanes: 12.9 G elem/s for a sum of squares on a Zen 3 core, 16 double lanes 7,
// one accumulator 3.5 (measured on the development machine).
constexpr int kLanes = 32;
constexpr int64_t kBlock = 1024;

// Runs element(i, a, b, c) for i in [0, n) and returns the sums of the squares of the three
// values it sets (e.g. g, p and the update; element may also write memory), each square
// added with one fused multiply-add (math::fmadd: LAMB's step ran ~5% slower on the CPU
// with a multiply and an add, once the compiler no longer fused them on its own). The
// values come out through references: GCC 12 left the loop scalar when they came back as
// a std::array. With W (lanes.h's WideLanes, not void), element is also called with W
// references for the kLanesWidth elements from i on.
template <typename A, typename W, typename Element>
inline std::array<double, 3> lane_sums(int64_t n, Element&& element) {
  std::array<double, 3> total = {0.0, 0.0, 0.0};
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t len = std::min(kBlock, n - base);
    A lanes_a[kLanes] = {}, lanes_b[kLanes] = {}, lanes_c[kLanes] = {};
    int64_t k = 0;
    if constexpr (!std::is_void_v<W>) {
      static_assert(std::is_same_v<A, float> && kLanes % kLanesWidth == 0);
      constexpr int kGroups = kLanes / kLanesWidth;
      W wa[kGroups], wb[kGroups], wc[kGroups];
      for (int q = 0; q < kGroups; ++q) wa[q] = wb[q] = wc[q] = W(0.0f);
      for (; k + kLanes <= len; k += kLanes) {
        for (int q = 0; q < kGroups; ++q) {
          W a, b, c;
          element(base + k + q * kLanesWidth, a, b, c);
          wa[q] = fmadd(a, a, wa[q]);
          wb[q] = fmadd(b, b, wb[q]);
          wc[q] = fmadd(c, c, wc[q]);
        }
      }
      for (int q = 0; q < kGroups; ++q) {
        lanes_to_floats(wa[q], lanes_a + q * kLanesWidth);
        lanes_to_floats(wb[q], lanes_b + q * kLanesWidth);
        lanes_to_floats(wc[q], lanes_c + q * kLanesWidth);
      }
    } else {
      for (; k + kLanes <= len; k += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          A a, b, c;
          element(base + k + j, a, b, c);
          lanes_a[j] = math::fmadd(a, a, lanes_a[j]);
          lanes_b[j] = math::fmadd(b, b, lanes_b[j]);
          lanes_c[j] = math::fmadd(c, c, lanes_c[j]);
        }
      }
    }
    for (; k < len; ++k) {
      A a, b, c;
      element(base + k, a, b, c);
      lanes_a[0] = math::fmadd(a, a, lanes_a[0]);
      lanes_b[0] = math::fmadd(b, b, lanes_b[0]);
      lanes_c[0] = math::fmadd(c, c, lanes_c[0]);
    }
    for (int j = 0; j < kLanes; ++j) {
      total[0] += static_cast<double>(lanes_a[j]);
      total[1] += static_cast<double>(lanes_b[j]);
      total[2] += static_cast<double>(lanes_c[j]);
    }
  }
  return total;
}

// The sum of the squares of x[0..n) with every square and sum in double: for values whose
// squares pass float's range. LARS's gradients reach it scaled: GradScaler's scale grows 2x
// every 2,000 steps without an inf (bf16 autocast never overflows), so 2^76 after ~120k steps
// from 2^16, and a gradient of 0.1 then squares to ~6e43 (float: inf, the ratio 0, the param
// frozen); squaring the unscaled gradient instead makes ~1e-24 squares 0 (the ratio 1).
// Double squares hold both. Four AVX2 double accumulators per 16 elements; deterministic
// (fixed order for a given n).
template <typename T>
inline double sum_squares_double(const T* __restrict__ x, int64_t n) {
  int64_t i = 0;
  double tail = 0.0;
#if FASTDYN_CPU_LANES
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
  for (; i + kLanesWidth <= n; i += kLanesWidth) {
    __m256d q[4];
    if constexpr (std::is_same_v<T, double>) {
      // (one chain of scalar FMAs had run float64 ~6x slower than float32)
      for (int j = 0; j < 4; ++j) q[j] = _mm256_loadu_pd(x + i + 4 * j);
    } else {
      const auto v = load_lanes<Lanes16<std::is_same_v<T, c10::BFloat16>>>(x + i);
      q[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(v.lo.v));
      q[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(v.lo.v, 1));
      q[2] = _mm256_cvtps_pd(_mm256_castps256_ps128(v.hi.v));
      q[3] = _mm256_cvtps_pd(_mm256_extractf128_ps(v.hi.v, 1));
    }
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_pd(q[j], q[j], acc[j]);
  }
  alignas(32) double lanes[16];
  for (int j = 0; j < 4; ++j) _mm256_store_pd(lanes + 4 * j, acc[j]);
  for (int j = 0; j < 16; ++j) tail += lanes[j];
#endif
  for (; i < n; ++i) {
    double v;
    if constexpr (std::is_same_v<T, double>) {
      v = x[i];
    } else {
      v = static_cast<double>(load<float>(x[i]));
    }
    tail = math::fmadd(v, v, tail);
  }
  return tail;
}

// An update loop with optional statistics: element(i, a, b, c) for i in [0, n), and with
// kSum the sums of the squares of a, b, c into *sums; without, the values are dropped (dead code). With W
// (not void), on W groups of kLanesWidth elements and the rest one by one.
template <bool kSum, typename A, typename W, typename Element>
inline void for_elements(int64_t n, Element&& element, std::array<double, 3>* sums) {
  if constexpr (kSum) {
    *sums = lane_sums<A, W>(n, element);
  } else if constexpr (!std::is_void_v<W>) {
    int64_t i = 0;
    for (; i + kLanesWidth <= n; i += kLanesWidth) {
      W a, b, c;
      element(i, a, b, c);
    }
    for (; i < n; ++i) {
      A a, b, c;
      element(i, a, b, c);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      A a, b, c;
      element(i, a, b, c);
    }
  }
}

}  // namespace cpu
}  // namespace fastdyn
