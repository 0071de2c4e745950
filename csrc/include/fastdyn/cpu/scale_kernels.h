// CPU in-place scaling of a tensor list, shared by multi_tensor_scale_ and clip_grad_norm_.
#pragma once
#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/multi_tensor.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/dispatch.h"

namespace fastdyn {
namespace cpu {

// Multiplies every element by s. s == 1 returns at once: multiplying by 1 changes no bit
// (NaN and inf included), and skipping it saves a read and a write of every tensor.
inline void scale_tensors_(at::TensorList ts, double s) {
  if (s == 1.0) return;
  ChunkPlan plan = plan_chunks(ts);
  for_each_chunk(plan, [&](const Chunk& c, int64_t) {
    const at::Tensor& t = ts[c.tensor];
    dispatch_float(t.scalar_type(), "tensors", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = typename OpMath<T>::type;
      const A sa = static_cast<A>(s);
      T* __restrict__ x = ptr<T>(t) + c.begin;
      for_elements<false, A, WideLanes<T>>(
          c.end - c.begin,
          [&]<typename L>(int64_t i, L&, L&, L&) { store_lanes(x + i, load_lanes<L>(x + i) * sa); },
          nullptr);
    });
  });
}

}  // namespace cpu
}  // namespace fastdyn
