// Fused Adam/AdamW on CUDA: one launch for the step counters, one pass over p, g, m, v
// (and vmax) per group of up to ~400 tensors; the math is csrc/include/fastdyn/math/adam.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cuda/update_common.cuh"
#include "fastdyn/math/adam.h"

namespace fastdyn {
namespace cuda {
namespace {

// Lists in the launch metadata, in this order.
enum AdamList { kP = 0, kG, kM, kV, kVmax, kMaster, kStep, kAdamDepth };

template <typename P, typename S, bool kHasMaster, bool kStats>
struct AdamChunkOp : SkipIfFoundInf {
  using A = typename OpMath<P>::type;
  math::AdamHyper<A> h;  // beta1's terms and weight_decay set from the tensors on the device
  ScalarRef beta1;
  ScalarRef weight_decay;
  ScalarRef lr;
  ScalarRef grad_scale;
  bool steps_double;
  double* stats_partials;

  __device__ __forceinline__ void operator()(const TensorListMeta<kAdamDepth>& meta, ChunkRef c) const {
    P* __restrict__ p = static_cast<P*>(meta.addr[kP][c.slot]);
    const P* __restrict__ g = static_cast<const P*>(meta.addr[kG][c.slot]);
    S* __restrict__ m = static_cast<S*>(meta.addr[kM][c.slot]);
    S* __restrict__ v = static_cast<S*>(meta.addr[kV][c.slot]);
    S* __restrict__ vmax = static_cast<S*>(meta.addr[kVmax][c.slot]);
    float* __restrict__ master = static_cast<float*>(meta.addr[kMaster][c.slot]);
    const double step = read_scalar(meta.addr[kStep][c.slot], steps_double);
    math::AdamHyper<A> h = math::adam_with_beta1(this->h, beta1.get());
    h.weight_decay = weight_decay.get();
    const auto s = math::adam_step_scalars<A>(h, lr.get(), step);
    const A inv = static_cast<A>(inverse_grad_scale(grad_scale));
    A g2 = A(0), p2 = A(0), d2 = A(0);
    struct Elem {
      A p, g, m, v, vmax;
    };
    for_chunk_elements(
        c.begin, c.end,
        [&](int64_t i) {
          return Elem{kHasMaster ? static_cast<A>(master[i]) : static_cast<A>(p[i]),
                      static_cast<A>(g[i]) * inv, static_cast<A>(m[i]), static_cast<A>(v[i]),
                      h.amsgrad ? static_cast<A>(vmax[i]) : A(0)};
        },
        [&](int64_t i, Elem e) {
          const A p_old = e.p;
          math::adam_update(e.p, e.g, e.m, e.v, e.vmax, h.amsgrad, h, s);
          if (kHasMaster) master[i] = static_cast<float>(e.p);
          p[i] = static_cast<P>(e.p);
          m[i] = static_cast<S>(e.m);
          v[i] = static_cast<S>(e.v);
          if (h.amsgrad) vmax[i] = static_cast<S>(e.vmax);
          if (kStats) {
            g2 = math::fmadd(e.g, e.g, g2);
            p2 = math::fmadd(p_old, p_old, p2);
            const A change = held_after<P, kHasMaster>(e.p) - p_old;
            d2 = math::fmadd(change, change, d2);
          }
        });
    if (kStats) write_stats_partials(stats_partials, c.global, g2, p2, d2);
  }
};

void adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
           at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
           const at::Tensor& beta1, double beta2, const at::Tensor& weight_decay, double eps,
           bool amsgrad,
           bool maximize, bool decoupled_weight_decay,
           const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                          master_params, state_steps, lr, beta1, weight_decay,
                                          amsgrad, grad_scale, found_inf, stats);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  const bool want_stats = stats.has_value();
  at::Tensor partials;
  if (want_stats) partials = at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, lr.options().dtype(at::kDouble));
  // after the allocations: a call that fails leaves the steps as they were
  increment_steps(state_steps, found);
  double* partials_ptr = want_stats ? partials.data_ptr<double>() : nullptr;
  const bool steps_double = state_steps[0].scalar_type() == at::kDouble;
  const at::TensorList none;
  const std::array<at::TensorList, kAdamDepth> lists = {
      params, grads, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : none, master_params, state_steps};

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    // beta1 and weight_decay are read on the device (AdamChunkOp)
    const auto h = math::adam_hyper<A>(0.0, beta2, eps, 0.0, amsgrad, maximize,
                                       decoupled_weight_decay);
    dispatch_flags(grp.has_master, want_stats, [&](auto master_c, auto stats_c) {
      using Op = AdamChunkOp<P, S, decltype(master_c)::value, decltype(stats_c)::value>;
      Op op;
      op.found_inf = found;
      op.h = h;
      op.beta1 = scalar_ref(beta1);
      op.weight_decay = scalar_ref(weight_decay);
      op.lr = scalar_ref(lr);
      op.grad_scale = scalar_ref(grad_scale);
      op.steps_double = steps_double;
      op.stats_partials = partials_ptr;
      for_each_batch<kAdamDepth>(lists, [&](const TensorListMeta<kAdamDepth>& meta) {
        launch_apply(meta, op);
        if (want_stats) launch_stats(meta, partials_ptr, nullptr, nullptr, stats->data_ptr<float>(), found);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("adam_", &adam_);
}

}  // namespace cuda
}  // namespace fastdyn
