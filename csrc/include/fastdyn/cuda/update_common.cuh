// What every CUDA optimizer op does around its kernel: advance the step counters on the
// device (skipped when found_inf is set), and reduce the optional per-tensor statistics.
#pragma once
#include <ATen/ATen.h>

#include "fastdyn/cuda/multi_tensor_apply.cuh"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/norm.h"
#include "fastdyn/optimizer_checks.h"

namespace fastdyn {
namespace cuda {

// Skip test shared by every update kernel: found_inf set means this step does not happen.
struct SkipIfFoundInf {
  ScalarRef found_inf;
  __device__ __forceinline__ bool skip() const { return found_inf.present() && found_inf.get() != 0.0; }
};

__device__ __forceinline__ double inverse_grad_scale(const ScalarRef& grad_scale) {
  return grad_scale.present() ? 1.0 / grad_scale.get() : 1.0;
}

template <bool kDouble>
struct StepIncrementOp : SkipIfFoundInf {
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, ChunkRef c) const {
    if (threadIdx.x != 0) return;
    using S = typename std::conditional<kDouble, double, float>::type;
    S* step = static_cast<S*>(meta.addr[0][c.slot]);
    *step = *step + S(1);
  }
};

// steps[i] += 1 for every i unless found_inf is set: one launch for all the counters.
inline void increment_steps(at::TensorList steps, ScalarRef found_inf) {
  if (steps.empty()) return;
  const bool is_double = steps[0].scalar_type() == at::kDouble;
  for (const at::Tensor& s : steps) {
    TORCH_CHECK_TYPE(s.scalar_type() == steps[0].scalar_type(),
                     "state_steps must share one dtype, got ", s.scalar_type(), " and ",
                     steps[0].scalar_type());
  }
  for_each_batch<1>({steps}, [&](const TensorListMeta<1>& meta) {
    if (is_double) {
      launch_apply(meta, StepIncrementOp<true>{{found_inf}});
    } else {
      launch_apply(meta, StepIncrementOp<false>{{found_inf}});
    }
  });
}

// The value a step holds after computing `computed` (cpu/lanes.h's held_after): the fp32
// master's, or a 16-bit param's as rounded into memory, so that track_stats' ||update|| is
// the change the step made.
template <typename P, bool kHasMaster, typename A>
__device__ __forceinline__ A held_after(A computed) {
  if constexpr (kHasMaster) {
    return computed;
  } else {
    return static_cast<A>(static_cast<P>(computed));
  }
}

// Writes the three per-chunk sums (g^2, p^2, update^2 at partials[3*chunk + k]) of one
// block's chunk. Every thread of the block must call it. Partials and their reductions are
// double: float64 params keep their precision, and fp32 sums lose nothing when combined.
__device__ __forceinline__ void write_stats_partials(double* partials, int64_t chunk, double g2, double p2,
                                                     double d2) {
  __shared__ double shared[32];
  g2 = block_reduce(g2, SumOp{}, shared);
  p2 = block_reduce(p2, SumOp{}, shared);
  d2 = block_reduce(d2, SumOp{}, shared);
  if (threadIdx.x == 0) {
    partials[3 * chunk + 0] = g2;
    partials[3 * chunk + 1] = p2;
    partials[3 * chunk + 2] = d2;
  }
}

// One block per tensor: stats[id] = (||g||, ||p||, ||update||, r) from the chunk partials;
// ratios (trust ratio per tensor) and update_norms may be null (1 and the partials then).
template <int Depth>
__global__ void __launch_bounds__(256) stats_kernel(TensorListMeta<Depth> meta, const double* partials,
                                                    const double* ratios, const double* update_norms,
                                                    float* stats, SkipIfFoundInf guard) {
  if (guard.skip()) return;
  __shared__ double shared[32];
  const int slot = blockIdx.x;
  const int64_t c0 = meta.chunk_offset + meta.chunk_begin[slot];
  const int64_t c1 = meta.chunk_offset + meta.chunk_begin[slot + 1];
  double sums[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    double acc = 0.0;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) acc += partials[3 * c + k];
    sums[k] = block_reduce(acc, SumOp{}, shared);
  }
  if (threadIdx.x == 0) {
    const int id = meta.tensor_id[slot];
    stats[4 * id + kGradNorm] = static_cast<float>(math::fsqrt(sums[0]));
    stats[4 * id + kParamNorm] = static_cast<float>(math::fsqrt(sums[1]));
    stats[4 * id + kUpdateNorm] = static_cast<float>(update_norms ? update_norms[id] : math::fsqrt(sums[2]));
    stats[4 * id + kTrustRatio] = static_cast<float>(ratios ? ratios[id] : 1.0);
  }
}

template <int Depth>
void launch_stats(const TensorListMeta<Depth>& meta, const double* partials, const double* ratios,
                  const double* update_norms, float* stats, ScalarRef found_inf) {
  stats_kernel<Depth><<<meta.n_tensors, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      meta, partials, ratios, update_norms, stats, SkipIfFoundInf{found_inf});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fastdyn
