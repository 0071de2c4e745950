// The SGD-momentum update that SGD and LARS share, for one chunk (the CPU side of
// cuda/momentum_update.cuh): d = direction(p, g) with g already unscaled (A or Lanes16),
// torch's momentum buffer on d (kMomentum), then p <- p - lr*d (and the fp32 master copy).
// With kStats the chunk's sums of squares of g, p and the change of the held value (as
// stored) go into *stats. The math is csrc/include/fastdyn/math/sgd.h.
#pragma once
#include <type_traits>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/lanes.h"
#include "fastdyn/cpu/update_common.h"
#include "fastdyn/dispatch.h"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cpu {

// kFirst and kNesterov are compile-time: with them as runtime selects next to those of
// the fp16 conversions, GCC 12 left the fp16 loops (and bf16 ones with statistics) scalar.
template <typename P, typename S, bool kMaster, bool kStats, bool kMomentum, bool kFirst,
          bool kNesterov, typename Direction>
void momentum_update_chunk(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ buf,
                           float* __restrict__ master, int64_t n, typename OpMath<P>::type lr,
                           typename OpMath<P>::type inv_scale,
                           const math::MomentumHyper<typename OpMath<P>::type> hyper,
                           Direction direction, StatsPartial* stats) {
  using A = typename OpMath<P>::type;
  const math::MomentumHyper<A> mh{hyper.momentum, hyper.dampening, kNesterov};
  // L: A for one element, Lanes16 for sixteen (16-bit arrays; lanes.h)
  auto update = [&]<typename L>(int64_t i, L& norm_g, L& norm_p, L& norm_change) {
    const L p_old = kMaster ? load_lanes<L>(master + i) : load_lanes<L>(p + i);
    const L gv = load_lanes<L>(g + i) * inv_scale;
    L d = direction(p_old, gv);
    if constexpr (kMomentum) {
      const L bv = math::momentum_buffer(d, load_lanes<L>(buf + i), mh, kFirst);
      store_lanes(buf + i, bv);
      d = math::momentum_direction(d, bv, mh);
    }
    const L pv = p_old - lr * d;
    if constexpr (kMaster) store_lanes(master + i, pv);
    store_lanes(p + i, pv);
    norm_g = gv;
    norm_p = p_old;
    const L change = held_after<P, kMaster>(pv, p, i) - p_old;
    norm_change = change;
  };
  for_elements<kStats, A, WideLanes<P, S>>(n, update, stats);
}

// Runs momentum_update_chunk on chunk c of the lists, the flags made compile-time: fp32
// masters present, statistics wanted (stats not null), momentum buffers given.
template <typename P, typename S, typename Direction>
void momentum_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::TensorList master_params, const Chunk& c, bool has_master, bool momentum,
                     typename OpMath<P>::type lr, typename OpMath<P>::type inv_scale,
                     const math::MomentumHyper<typename OpMath<P>::type> mh, bool first_step,
                     Direction direction, StatsPartial* stats) {
  const int64_t t = c.tensor, b = c.begin;
  S* buf = momentum ? list_ptr<S>(momentum_buffers, t, b) : nullptr;
  dispatch_flags(has_master, stats != nullptr, [&](auto master_c, auto stats_c) {
    constexpr bool kMaster = decltype(master_c)::value, kStats = decltype(stats_c)::value;
    auto run = [&](auto momentum_c, auto first_c, auto nesterov_c) {
      P* p = list_ptr<P>(params, t, b);
      const P* g = list_ptr<const P>(grads, t, b);
      float* master = list_ptr<float>(master_params, t, b);
      const int64_t n = c.end - b;
      momentum_update_chunk<P, S, kMaster, kStats, decltype(momentum_c)::value,
                            decltype(first_c)::value, decltype(nesterov_c)::value>(
          p, g, buf, master, n, lr, inv_scale, mh, direction, stats);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (!buf) {
      run(F{}, F{}, F{});
    } else if (first_step) {
      mh.nesterov ? run(T{}, T{}, T{}) : run(T{}, T{}, F{});
    } else {
      mh.nesterov ? run(T{}, F{}, T{}) : run(T{}, F{}, F{});
    }
  });
}

}  // namespace cpu
}  // namespace fastdyn
