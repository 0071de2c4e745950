// CPU building blocks of the norm, unscale and clip ops: per-chunk partials (float lanes
// flushed into doubles, see lane_sums.h) and their deterministic per-tensor reduction.
#pragma once
#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/multi_tensor.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/norm.h"

namespace fastdyn {
namespace cpu {

using math::NormKind;

// Accumulates in kLanes independent lanes of the compute type, flushed into a double every
// kBlock elements (lane_sums.h says why); written out here because the inf norm takes a max.
template <NormKind K, typename T>
inline double chunk_norm_partial(const T* __restrict__ x, int64_t n) {
  using A = typename OpMath<T>::type;
  double acc = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    A lanes[kLanes] = {};
    for (int64_t k = 0; k < kBlock; k += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        lanes[j] = math::norm_accumulate<K>(lanes[j], load<A>(x[i + k + j]));
      }
    }
    for (int j = 0; j < kLanes; ++j) acc = math::norm_combine<K>(acc, static_cast<double>(lanes[j]));
  }
  for (; i < n; ++i) {
    acc = math::norm_accumulate<K>(acc, static_cast<double>(load<A>(x[i])));
  }
  return acc;
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
