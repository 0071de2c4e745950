// CUDA in-place scaling by a device scalar, shared by multi_tensor_scale_ and clip_grad_norm_.
#pragma once
#include "fastdyn/cuda/multi_tensor_apply.cuh"
#include "fastdyn/cuda/norm_kernels.cuh"

namespace fastdyn {
namespace cuda {

// x *= scale. Every block reads the scale first and stops when it is exactly 1 (no bit
// would change), so an unclipped step costs a launch and no memory traffic.
template <typename T>
struct ScaleChunkOp {
  ScalarRef scale;
  __device__ __forceinline__ bool skip() const { return scale.get() == 1.0; }
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, ChunkRef c) const {
    using A = typename OpMath<T>::type;
    T* __restrict__ x = static_cast<T*>(meta.addr[0][c.slot]);
    const A s = static_cast<A>(scale.get());
    for_chunk_elements(
        c.begin, c.end, [&](int64_t i) { return static_cast<A>(x[i]); },
        [&](int64_t i, A xv) { x[i] = static_cast<T>(xv * s); });
  }
};

inline void scale_tensors_(at::TensorList ts, ScalarRef scale) {
  for (const auto& kv : positions_by_dtype(ts)) {
    const std::vector<at::Tensor> sub = select(ts, kv.second);
    dispatch_float(kv.first, "tensors", [&](auto tag) {
      using T = typename decltype(tag)::type;
      for_each_batch<1>({at::TensorList(sub)},
                        [&](const TensorListMeta<1>& meta) { launch_apply(meta, ScaleChunkOp<T>{scale}); });
    });
  }
}

}  // namespace cuda
}  // namespace fastdyn
