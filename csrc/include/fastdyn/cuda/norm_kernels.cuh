// CUDA pieces of the norm, unscale and clip ops: per-chunk partials, their per-tensor
// reduction and the total, each combined in a fixed order. A thread accumulates its
// elements in float (double for float64 inputs); the block, the partials and what combines
// them are double, so sums of squares past float's range neither overflow nor flush to 0
// before the square root. (A float block sum made 65536 x 1e17 an inf norm where the CPU,
// flushing 32-value lane sums into doubles, gives 2.6e19.)
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <type_traits>
#include <vector>

#include "fastdyn/cuda/multi_tensor_apply.cuh"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/norm.h"

namespace fastdyn {
namespace cuda {

using math::NormKind;

template <NormKind K, typename A>
struct NormCombine {
  __device__ __forceinline__ A operator()(A a, A b) const { return math::norm_combine<K>(a, b); }
};

// Partial of one chunk: sum of squares (L2) or max |x| (inf), per thread in float; with
// kWideSquares in double (multi_tensor_norm's inv_scale: loss-scaled values, whose float
// squares pass float's range from a scale of ~2^60).
template <NormKind K, typename T, bool kWideSquares = false>
struct NormChunkOp {
  double* partials;
  __device__ __forceinline__ bool skip() const { return false; }
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, ChunkRef c) const {
    using A = std::conditional_t<kWideSquares, double, typename OpMath<T>::type>;
    __shared__ double shared[32];
    const T* __restrict__ x = static_cast<const T*>(meta.addr[0][c.slot]);
    A acc = A(0);
    for_chunk_elements(
        c.begin, c.end, [&](int64_t i) { return static_cast<A>(x[i]); },
        [&](int64_t, A xv) { acc = math::norm_accumulate<K>(acc, xv); });
    const double r = block_reduce(static_cast<double>(acc), NormCombine<K, double>{}, shared);
    if (threadIdx.x == 0) partials[c.global] = r;
  }
};

// In-place unscale with the inf check and the partial of the unscaled values.
template <NormKind K, typename T>
struct UnscaleChunkOp {
  double* partials;
  ScalarRef inv_scale;  // float64 gradients get a float64 inv_scale unrounded
  float* found_inf;
  __device__ __forceinline__ bool skip() const { return false; }
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, ChunkRef c) const {
    using A = typename OpMath<T>::type;
    __shared__ double shared[32];
    T* __restrict__ x = static_cast<T*>(meta.addr[0][c.slot]);
    const A inv = static_cast<A>(inv_scale.get());
    A acc = A(0);
    bool bad = false;
    for_chunk_elements(
        c.begin, c.end, [&](int64_t i) { return static_cast<A>(x[i]); },
        [&](int64_t i, A raw) {
          bad |= !math::is_finite(raw);
          const T out = static_cast<T>(raw * inv);
          x[i] = out;
          acc = math::norm_accumulate<K>(acc, static_cast<A>(out));
        });
    // Every writer stores the same 1.0, so the race is benign and the result deterministic.
    if (bad) *found_inf = 1.f;
    const double r = block_reduce(static_cast<double>(acc), NormCombine<K, double>{}, shared);
    if (threadIdx.x == 0) partials[c.global] = r;
  }
};

// One block per tensor of the launch: combines its chunk partials in order.
template <NormKind K, int Depth>
__global__ void __launch_bounds__(256) per_tensor_kernel(TensorListMeta<Depth> meta,
                                                         const double* partials, double* per_tensor) {
  __shared__ double shared[32];
  const int slot = blockIdx.x;
  const int64_t c0 = meta.chunk_offset + meta.chunk_begin[slot];
  const int64_t c1 = meta.chunk_offset + meta.chunk_begin[slot + 1];
  double acc = 0.0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) acc = math::norm_combine<K>(acc, partials[c]);
  acc = block_reduce(acc, NormCombine<K, double>{}, shared);
  if (threadIdx.x == 0) per_tensor[meta.tensor_id[slot]] = acc;
}

template <NormKind K, int Depth>
void launch_per_tensor(const TensorListMeta<Depth>& meta, const double* partials, double* per_tensor) {
  per_tensor_kernel<K, Depth><<<meta.n_tensors, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      meta, partials, per_tensor);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Single block: total = finish(combine(per_tensor partials)), per_tensor_out = finish(each);
// with clip_coef, also torch's clipping coefficient min(max_norm / (total + 1e-6), 1), from
// the float32 total that is returned (as torch's rule reads it). With inv_scale, the partials
// are those of the values times it (sums of squares times its square, maxima times |it|).
template <NormKind K>
__global__ void __launch_bounds__(1024) total_kernel(const double* per_tensor, int64_t n, float* total,
                                                     float* per_tensor_out, float* clip_coef,
                                                     float max_norm, ScalarRef inv_scale) {
  __shared__ double shared[32];
  const double inv = inv_scale.present() ? inv_scale.get() : 1.0;
  const double factor = K == NormKind::L2 ? inv * inv : fabs(inv);
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double v = per_tensor[i] * factor;
    acc = math::norm_combine<K>(acc, v);
    if (per_tensor_out) per_tensor_out[i] = static_cast<float>(math::norm_finish<K>(v));
  }
  acc = block_reduce(acc, NormCombine<K, double>{}, shared);
  if (threadIdx.x == 0) {
    const float t = static_cast<float>(math::norm_finish<K>(acc));
    *total = t;
    if (clip_coef) *clip_coef = math::clip_coefficient(t, max_norm);
  }
}

template <NormKind K>
void launch_total(const double* per_tensor, int64_t n, float* total, float* per_tensor_out,
                  float* clip_coef = nullptr, float max_norm = 0.f, ScalarRef inv_scale = {}) {
  total_kernel<K><<<1, 1024, 0, c10::cuda::getCurrentCUDAStream()>>>(
      per_tensor, n, total, per_tensor_out, clip_coef, max_norm, inv_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Positions of each dtype in a mixed-dtype list (the kernels are typed per launch).
inline std::map<at::ScalarType, std::vector<int64_t>> positions_by_dtype(at::TensorList ts) {
  std::map<at::ScalarType, std::vector<int64_t>> out;
  for (size_t i = 0; i < ts.size(); ++i) out[ts[i].scalar_type()].push_back(static_cast<int64_t>(i));
  return out;
}

inline std::vector<at::Tensor> select(at::TensorList ts, const std::vector<int64_t>& idx) {
  std::vector<at::Tensor> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(ts[i]);
  return out;
}

template <typename F>
inline void dispatch_norm_kind(double ord, F&& f) {
  if (ord == 2.0) {
    f(std::integral_constant<NormKind, NormKind::L2>{});
  } else {
    f(std::integral_constant<NormKind, NormKind::Inf>{});
  }
}

// Per-tensor partials (sums of squares / max) of a mixed-dtype list into per_tensor[n],
// optionally unscaling in place first (inv_scale/found_inf non-null); with kWideSquares,
// squares in double (NormChunkOp).
template <NormKind K, bool kWideSquares = false>
void per_tensor_partials(at::TensorList ts, double* per_tensor, ScalarRef inv_scale = {},
                         float* found_inf = nullptr) {
  const int64_t n_chunks = count_chunks(ts);
  at::Tensor partials = at::empty({n_chunks > 0 ? n_chunks : 1},
                                  ts[0].options().dtype(at::kDouble));
  double* partials_ptr = partials.data_ptr<double>();
  int64_t chunk_base = 0;
  for (const auto& kv : positions_by_dtype(ts)) {
    const std::vector<at::Tensor> sub = select(ts, kv.second);
    dispatch_float(kv.first, "tensors", [&](auto tag) {
      using T = typename decltype(tag)::type;
      for_each_batch<1>({at::TensorList(sub)}, [&](const TensorListMeta<1>& meta) {
        if (inv_scale.ptr) {
          launch_apply(meta, UnscaleChunkOp<K, T>{partials_ptr, inv_scale, found_inf});
        } else {
          launch_apply(meta, NormChunkOp<K, T, kWideSquares>{partials_ptr});
        }
        launch_per_tensor<K>(meta, partials_ptr, per_tensor);
      }, &kv.second, chunk_base);
    });
    chunk_base += count_chunks(sub);
  }
}

}  // namespace cuda
}  // namespace fastdyn
