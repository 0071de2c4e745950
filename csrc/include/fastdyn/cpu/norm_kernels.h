// CPU building blocks of the norm, unscale and clip ops: per-chunk partials (float lanes
// flushed into doubles, see lane_sums.h) and their deterministic per-tensor reduction.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/multi_tensor.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/norm.h"

namespace fastdyn {
namespace cpu {

using math::NormKind;

// The norm partial of value(i, probe) over i in [0, n), and the sum of the probes.
// Accumulates in kLanes independent lanes of the compute type, flushed into doubles every
// kBlock elements (lane_sums.h says why); written out here because the inf norm takes a
// max. value may write memory (the unscale op stores each element before returning it);
// the probe is a second sum it may set, e.g. x * 0 (NaN for inf/NaN x) for an inf check
// that vectorizes where a branch or a bool flag did not. With W (lanes.h's WideLanes, not
// void), value is also called for kLanesWidth elements at a time (a W probe, returning W).
// A block shorter than kBlock (a chunk's end) runs on the lanes too, as far as whole groups
// of kLanes go: left to the one-element loop, the up to 1,023 elements of a chunk's end took
// ~4 cycles each (one chain of double adds): a norm of 1,000 tensors of 3,000 elements ran
// 1.14 ms on one thread, against 0.39 for the same loop in double lanes.
template <NormKind K, typename A, typename W, typename Value>
inline std::array<double, 2> lane_norm_partial(int64_t n, Value&& value) {
  double acc = 0.0, probe_sum = 0.0;
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t len = std::min(kBlock, n - base);
    A lanes[kLanes] = {}, probes[kLanes] = {};
    int64_t k = 0;
    if constexpr (!std::is_void_v<W>) {
      constexpr int kGroups = kLanes / kLanesWidth;
      W wlanes[kGroups], wprobes[kGroups];
      for (int q = 0; q < kGroups; ++q) wlanes[q] = wprobes[q] = W(0.0f);
      for (; k + kLanes <= len; k += kLanes) {
        for (int q = 0; q < kGroups; ++q) {
          W probe(0.0f);
          wlanes[q] = math::norm_accumulate<K>(wlanes[q], value(base + k + q * kLanesWidth, probe));
          wprobes[q] += probe;
        }
      }
      for (int q = 0; q < kGroups; ++q) {
        lanes_to_floats(wlanes[q], lanes + q * kLanesWidth);
        lanes_to_floats(wprobes[q], probes + q * kLanesWidth);
      }
    } else {
      for (; k + kLanes <= len; k += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          A probe = A(0);
          lanes[j] = math::norm_accumulate<K>(lanes[j], value(base + k + j, probe));
          probes[j] += probe;
        }
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      acc = math::norm_combine<K>(acc, static_cast<double>(lanes[j]));
      probe_sum += static_cast<double>(probes[j]);
    }
    // the last < kLanes elements square in the compute type, as the lanes do (1e20^2 is inf
    // in float32 whatever the length: squared in double, 1,023 x 1e20 had been finite), and
    // sum in double, as the lanes flush theirs
    for (; k < len; ++k) {
      A probe = A(0);
      acc = math::norm_combine<K>(
          acc, static_cast<double>(math::norm_accumulate<K>(A(0), value(base + k, probe))));
      probe_sum += static_cast<double>(probe);
    }
  }
  return {acc, probe_sum};
}

template <NormKind K, typename T>
inline double chunk_norm_partial(const T* __restrict__ x, int64_t n) {
  using A = typename OpMath<T>::type;
  return lane_norm_partial<K, A, WideLanes<T>>(
      n, [&]<typename L>(int64_t i, L&) { return load_lanes<L>(x + i); })[0];
}

// With kWideSquares (L2 only), every square and sum in double (sum_squares_double).
template <NormKind K, bool kWideSquares = false>
inline double tensor_chunk_partial(const at::Tensor& t, const Chunk& c) {
  double out = 0.0;
  dispatch_float(t.scalar_type(), "tensors", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = ptr<const T>(t) + c.begin;
    if constexpr (kWideSquares && K == NormKind::L2) {
      out = sum_squares_double(x, c.end - c.begin);
    } else {
      out = chunk_norm_partial<K>(x, c.end - c.begin);
    }
  });
  return out;
}

// A partial (sum of squares, or max |x|) of values x as the partial of x * inv_scale.
template <NormKind K>
inline double scaled_partial(double partial, double inv_scale) {
  return K == NormKind::L2 ? partial * inv_scale * inv_scale : partial * std::fabs(inv_scale);
}

// Combines chunk partials into per-tensor partials (in chunk order) and a total partial
// (in tensor order). Partials are sums of squares for L2, max |x| for inf.
template <NormKind K>
inline double reduce_partials(const ChunkPlan& plan, const std::vector<double>& chunk_partials,
                              double* per_tensor_partials) {
  double total = 0.0;
  const int64_t n = static_cast<int64_t>(plan.first_chunk.size()) - 1;
  for (int64_t t = 0; t < n; ++t) {
    double acc = 0.0;
    for (int64_t c = plan.first_chunk[t]; c < plan.first_chunk[t + 1]; ++c) {
      acc = math::norm_combine<K>(acc, chunk_partials[c]);
    }
    if (per_tensor_partials) per_tensor_partials[t] = acc;
    total = math::norm_combine<K>(total, acc);
  }
  return total;
}

template <typename F>
inline void dispatch_norm_kind(double ord, F&& f) {
  if (ord == 2.0) {
    f(std::integral_constant<NormKind, NormKind::L2>{});
  } else {
    f(std::integral_constant<NormKind, NormKind::Inf>{});
  }
}

// Norm of every tensor and of all of them together (float32 outputs); with inv_scale, of
// the tensors times *inv_scale, their squares in double.
inline void multi_tensor_norm_into(at::TensorList ts, double ord, float* total_out,
                                   float* per_tensor_out, const double* inv_scale = nullptr) {
  ChunkPlan plan = plan_chunks(ts);
  std::vector<double> partials(plan.chunks.size());
  std::vector<double> per(ts.size());
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    for_each_chunk(plan, [&](const Chunk& c, int64_t i) {
      partials[i] = inv_scale ? tensor_chunk_partial<K, true>(ts[c.tensor], c)
                              : tensor_chunk_partial<K>(ts[c.tensor], c);
    });
    double total = reduce_partials<K>(plan, partials, per.data());
    if (inv_scale) {
      // each tensor's partial scaled, then combined, as on CUDA and Triton (an inf inv_scale
      // makes an all-zero tensor's norm NaN, 0 * inf, and so the total's)
      total = 0.0;
      for (double& v : per) total = math::norm_combine<K>(total, v = scaled_partial<K>(v, *inv_scale));
    }
    *total_out = static_cast<float>(math::norm_finish<K>(total));
    if (per_tensor_out) {
      for (size_t t = 0; t < ts.size(); ++t) {
        per_tensor_out[t] = static_cast<float>(math::norm_finish<K>(per[t]));
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastdyn
