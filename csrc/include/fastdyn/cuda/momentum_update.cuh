// The SGD-momentum update that SGD and LARS share, for one chunk: d = direction(p, g) with
// g already unscaled, torch's momentum buffer on d (buf null when momentum is 0), then
// p <- p - lr*d (and the fp32 master copy). on_update(p_old, g, p_new) sees every element,
// for the optional statistics. The per-element math is csrc/include/fastdyn/math/sgd.h.
#pragma once
#include "fastdyn/cuda/multi_tensor_apply.cuh"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cuda {

template <bool kHasMaster, typename P, typename S, typename A, typename Direction, typename OnUpdate>
__device__ __forceinline__ void momentum_update_chunk(P* __restrict__ p, const P* __restrict__ g,
                                                      S* __restrict__ buf, float* __restrict__ master,
                                                      const ChunkRef& c, A inv_grad_scale, A lr,
                                                      const math::MomentumHyper<A>& mh, bool first_step,
                                                      Direction direction, OnUpdate on_update) {
  struct Elem {
    A p, g, buf;
  };
  const bool read_buf = buf && !first_step;
  for_chunk_elements(
      c.begin, c.end,
      [&](int64_t i) {
        return Elem{kHasMaster ? static_cast<A>(master[i]) : static_cast<A>(p[i]),
                    static_cast<A>(g[i]) * inv_grad_scale, read_buf ? static_cast<A>(buf[i]) : A(0)};
      },
      [&](int64_t i, const Elem& e) {
        A d = direction(e.p, e.g);
        if (buf) {
          const A bv = math::momentum_buffer(d, e.buf, mh, first_step);
          buf[i] = static_cast<S>(bv);
          d = math::momentum_direction(d, bv, mh);
        }
        const A pv = e.p - lr * d;
        if (kHasMaster) master[i] = static_cast<float>(pv);
        p[i] = static_cast<P>(pv);
        on_update(e.p, e.g, pv);
      });
}

}  // namespace cuda
}  // namespace fastdyn
