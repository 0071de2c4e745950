// CPU building blocks of the norm, unscale and clip ops: per-chunk partials (float lanes
// flushed into doubles, see lane_sums.h) and their deterministic per-tensor reduction.
#pragma once
#include <array>
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
template <NormKind K, typename A, typename W, typename Value>
inline std::array<double, 2> lane_norm_partial(int64_t n, Value&& value) {
  double acc = 0.0, probe_sum = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    A lanes[kLanes] = {}, probes[kLanes] = {};
    if constexpr (!std::is_void_v<W>) {
      constexpr int kGroups = kLanes / kLanesWidth;
      W wlanes[kGroups], wprobes[kGroups];
      for (int q = 0; q < kGroups; ++q) wlanes[q] = wprobes[q] = W(0.0f);
      for (int64_t k = 0; k < kBlock; k += kLanes) {
        for (int q = 0; q < kGroups; ++q) {
          W probe(0.0f);
          wlanes[q] = math::norm_accumulate<K>(wlanes[q], value(i + k + q * kLanesWidth, probe));
          wprobes[q] += probe;
        }
      }
      for (int q = 0; q < kGroups; ++q) {
        lanes_to_floats(wlanes[q], lanes + q * kLanesWidth);
        lanes_to_floats(wprobes[q], probes + q * kLanesWidth);
      }
    } else {
      for (int64_t k = 0; k < kBlock; k += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          A probe = A(0);
          lanes[j] = math::norm_accumulate<K>(lanes[j], value(i + k + j, probe));
          probes[j] += probe;
        }
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      acc = math::norm_combine<K>(acc, static_cast<double>(lanes[j]));
      probe_sum += static_cast<double>(probes[j]);
    }
  }
  // the tail squares in the compute type, as the blocks do (1e20^2 is inf in float32
  // whatever the length: the tail squared in double had made 1,023 x 1e20 finite), and
  // sums in double, as the blocks flush theirs (summed in one float, 1,000 x 1e18 was inf
  // and 1,024 x 1e18 a norm of 3.2e19)
  for (; i < n; ++i) {
    A probe = A(0);
    acc = math::norm_combine<K>(acc, static_cast<double>(math::norm_accumulate<K>(A(0), value(i, probe))));
    probe_sum += static_cast<double>(probe);
  }
  return {acc, probe_sum};
}

template <NormKind K, typename T>
inline double chunk_norm_partial(const T* __restrict__ x, int64_t n) {
  using A = typename OpMath<T>::type;
  return lane_norm_partial<K, A, WideLanes<T>>(
      n, [&]<typename L>(int64_t i, L&) { return load_lanes<L>(x + i); })[0];
}

template <NormKind K>
inline double tensor_chunk_partial(const at::Tensor& t, const Chunk& c) {
  double out = 0.0;
  dispatch_float(t.scalar_type(), "tensors", [&](auto tag) {
    using T = typename decltype(tag)::type;
    out = chunk_norm_partial<K>(ptr<const T>(t) + c.begin, c.end - c.begin);
  });
  return out;
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

// Norm of every tensor and of all of them together (float32 outputs).
inline void multi_tensor_norm_into(at::TensorList ts, double ord, float* total_out,
                                   float* per_tensor_out) {
  ChunkPlan plan = plan_chunks(ts);
  std::vector<double> partials(plan.chunks.size());
  std::vector<double> per(ts.size());
  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    for_each_chunk(plan, [&](const Chunk& c, int64_t i) {
      partials[i] = tensor_chunk_partial<K>(ts[c.tensor], c);
    });
    const double total = reduce_partials<K>(plan, partials, per.data());
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
