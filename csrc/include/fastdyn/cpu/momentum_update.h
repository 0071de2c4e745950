// The SGD-momentum update that SGD and LARS share, for one chunk (the CPU side of
// cuda/momentum_update.cuh): d = direction(p, g) with g already unscaled, torch's momentum
// buffer on d (kMomentum), then p <- p - lr*d (and the fp32 master copy). With kStats the
// chunk's sums of squares of g, p and the update go into *stats. The per-element math is
// csrc/include/fastdyn/math/sgd.h.
#pragma once
#include <type_traits>

#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/lane_sums.h"
#include "fastdyn/cpu/stage16.h"
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
  auto update = [&](int64_t i, A& g2, A& p2, A& d2) {
    const A p_old = kMaster ? static_cast<A>(master[i]) : load<A>(p[i]);
    const A gv = load<A>(g[i]) * inv_scale;
    A d = direction(p_old, gv);
    if (kMomentum) {
      const A bv = math::momentum_buffer(d, load<A>(buf[i]), mh, kFirst);
      buf[i] = store<S>(bv);
      d = math::momentum_direction(d, bv, mh);
    }
    const A pv = p_old - lr * d;
    if (kMaster) master[i] = static_cast<float>(pv);
    p[i] = store<P>(pv);
    g2 = gv * gv;
    p2 = p_old * p_old;
    d2 = (pv - p_old) * (pv - p_old);
  };
  for_elements<kStats, A>(n, update, stats);
}

// Runs momentum_update_chunk on chunk c of the lists, the flags made compile-time: fp32
// masters present, statistics wanted (stats not null), momentum nonzero (buffers used).
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
      if constexpr (kStaged<P> || kStaged<S>) {
        // fp32 blocks (stage16.h); the same kernel on them, the same bits
        float p_s[kStageElems], g_s[kStageElems], b_s[kStageElems];
        for_stage_blocks(n, stats, [&](int64_t o, int64_t len, StatsPartial* block_stats) {
          float* pf = staged(p, p_s, o, len, !kMaster);
          float* bf = staged(buf, b_s, o, len, true);
          momentum_update_chunk<float, float, kMaster, kStats, decltype(momentum_c)::value,
                                decltype(first_c)::value, decltype(nesterov_c)::value>(
              pf, staged(g, g_s, o, len, true), bf, master ? master + o : nullptr, len, lr,
              inv_scale, mh, direction, block_stats);
          unstage(pf, p, o, len);
          unstage(bf, buf, o, len);
        });
      } else {
        momentum_update_chunk<P, S, kMaster, kStats, decltype(momentum_c)::value,
                              decltype(first_c)::value, decltype(nesterov_c)::value>(
            p, g, buf, master, n, lr, inv_scale, mh, direction, stats);
      }
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
