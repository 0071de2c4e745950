// Fused SGD on CUDA: one pass over p, g (and the momentum buffer).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cuda/momentum_update.cuh"
#include "fastdyn/cuda/update_common.cuh"
#include "fastdyn/math/sgd.h"

namespace fastdyn {
namespace cuda {
namespace {

enum SgdList { kP = 0, kG, kBuf, kMaster, kSgdDepth };

template <typename P, typename S, bool kHasMaster, bool kStats>
struct SgdChunkOp : SkipIfFoundInf {
  using A = typename OpMath<P>::type;
  math::MomentumHyper<A> mh;
  A weight_decay;
  bool maximize;
  bool first_step;
  ScalarRef lr;
  ScalarRef grad_scale;
  double* stats_partials;

  __device__ __forceinline__ void operator()(const TensorListMeta<kSgdDepth>& meta, ChunkRef c) const {
    P* __restrict__ p = static_cast<P*>(meta.addr[kP][c.slot]);
    const P* __restrict__ g = static_cast<const P*>(meta.addr[kG][c.slot]);
    S* __restrict__ buf = static_cast<S*>(meta.addr[kBuf][c.slot]);
    float* __restrict__ master = static_cast<float*>(meta.addr[kMaster][c.slot]);
    const A lr_v = static_cast<A>(lr.get());
    const A inv = static_cast<A>(inverse_grad_scale(grad_scale));
    A g2 = A(0), p2 = A(0), d2 = A(0);
    const A grad_sign = maximize ? A(-1) : A(1);
    momentum_update_chunk<kHasMaster>(
        p, g, buf, master, c, inv, lr_v, mh, first_step,
        [&](A pv, A gv) { return math::sgd_direction(pv, gv, weight_decay, grad_sign); },
        [&](A p_old, A gv, A pv) {
          if (kStats) {
            g2 += gv * gv;
            p2 += p_old * p_old;
            d2 += (pv - p_old) * (pv - p_old);
          }
        });
    if (kStats) write_stats_partials(stats_partials, c.global, g2, p2, d2);
  }
};

void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
          at::TensorList master_params, const at::Tensor& lr, double momentum, double dampening,
          double weight_decay, bool nesterov, bool maximize, bool is_first_step,
          const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
          const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  const bool want_stats = stats.has_value();
  at::Tensor partials;
  if (want_stats) partials = at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, lr.options().dtype(at::kDouble));
  double* partials_ptr = want_stats ? partials.data_ptr<double>() : nullptr;
  const at::TensorList none;
  const std::array<at::TensorList, kSgdDepth> lists = {
      params, grads, momentum != 0.0 ? momentum_buffers : none, master_params};

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    dispatch_flags(grp.has_master, want_stats, [&](auto master_c, auto stats_c) {
      using Op = SgdChunkOp<P, S, decltype(master_c)::value, decltype(stats_c)::value>;
      Op op;
      op.found_inf = found;
      op.mh = math::MomentumHyper<A>{A(momentum), A(dampening), nesterov};
      op.weight_decay = A(weight_decay);
      op.maximize = maximize;
      op.first_step = is_first_step;
      op.lr = scalar_ref(lr);
      op.grad_scale = scalar_ref(grad_scale);
      op.stats_partials = partials_ptr;
      for_each_batch<kSgdDepth>(lists, [&](const TensorListMeta<kSgdDepth>& meta) {
        launch_apply(meta, op);
        if (want_stats) launch_stats(meta, partials_ptr, nullptr, nullptr, stats->data_ptr<float>(), found);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("sgd_", &sgd_);
}

}  // namespace cuda
}  // namespace fastdyn
