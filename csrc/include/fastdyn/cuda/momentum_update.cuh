// The SGD-momentum update that SGD and LARS share, for one chunk: d = direction(p, g) with
// g already unscaled, torch's momentum buffer on d (none without buffers), then
// p <- p - lr*d (and the fp32 master copy). on_update(p_old, g, p_new) sees every element,
// for the optional statistics. The per-element math is csrc/include/fastdyn/math/sgd.h.
// MomentumUpdateOp is the whole update pass of both ops; they differ only in Direction.
#pragma once
#include <ATen/ATen.h>

#include "fastdyn/cuda/multi_tensor_apply.cuh"
#include "fastdyn/cuda/update_common.cuh"
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

// The lists of SGD's and LARS's launches (buffers empty: no momentum).
enum MomentumList { kP = 0, kG, kBuf, kMaster, kMomentumDepth };

// One chunk of the update pass. Direction::for_tensor(tensor id) gives the per-element
// d(p, g) of that tensor (SGD: sign and weight decay; LARS: its trust ratio too).
template <typename P, typename S, bool kHasMaster, bool kStats, typename Direction>
struct MomentumUpdateOp : SkipIfFoundInf {
  using A = typename OpMath<P>::type;
  math::MomentumHyper<A> mh;  // its momentum read from `momentum` (absent without buffers)
  ScalarRef momentum;
  bool first_step;
  ScalarRef lr;
  ScalarRef grad_scale;
  double* stats_partials;  // [chunk][3]: g^2, p^2, update^2 (kStats)
  Direction direction;

  __device__ __forceinline__ void operator()(const TensorListMeta<kMomentumDepth>& meta, ChunkRef c) const {
    P* __restrict__ p = static_cast<P*>(meta.addr[kP][c.slot]);
    const P* __restrict__ g = static_cast<const P*>(meta.addr[kG][c.slot]);
    S* __restrict__ buf = static_cast<S*>(meta.addr[kBuf][c.slot]);
    float* __restrict__ master = static_cast<float*>(meta.addr[kMaster][c.slot]);
    const A lr_v = static_cast<A>(lr.get());
    math::MomentumHyper<A> hyper = mh;
    if (momentum.present()) hyper.momentum = static_cast<A>(momentum.get());
    const A inv = static_cast<A>(inverse_grad_scale(grad_scale));
    const auto d = direction.for_tensor(meta.tensor_id[c.slot]);
    A g2 = A(0), p2 = A(0), d2 = A(0);
    momentum_update_chunk<kHasMaster>(
        p, g, buf, master, c, inv, lr_v, hyper, first_step, d, [&](A p_old, A gv, A pv) {
          if (kStats) {
            g2 = math::fmadd(gv, gv, g2);
            p2 = math::fmadd(p_old, p_old, p2);
            const A change = held_after<P, kHasMaster>(pv) - p_old;
            d2 = math::fmadd(change, change, d2);
          }
        });
    if (kStats) write_stats_partials(stats_partials, c.global, g2, p2, d2);
  }
};

// The update op of the group's types and flags, its scalars from the op's arguments.
template <typename P, typename S, bool kHasMaster, bool kStats, typename Direction>
MomentumUpdateOp<P, S, kHasMaster, kStats, Direction> make_momentum_update(
    Direction direction, ScalarRef found_inf, const at::Tensor& momentum, bool has_momentum,
    double dampening, bool nesterov, bool first_step, const at::Tensor& lr,
    const c10::optional<at::Tensor>& grad_scale, double* stats_partials) {
  using A = typename OpMath<P>::type;
  MomentumUpdateOp<P, S, kHasMaster, kStats, Direction> op;
  op.found_inf = found_inf;
  op.mh = math::MomentumHyper<A>{A(0), A(dampening), nesterov};
  op.momentum = has_momentum ? scalar_ref(momentum) : ScalarRef{};
  op.first_step = first_step;
  op.lr = scalar_ref(lr);
  op.grad_scale = scalar_ref(grad_scale);
  op.stats_partials = stats_partials;
  op.direction = direction;
  return op;
}

}  // namespace cuda
}  // namespace fastdyn
