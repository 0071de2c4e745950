// Fused LAMB on CUDA. Per group of up to ~400 tensors: the step counters, the moment pass
// (writes m, v; per-chunk ||p||^2, ||u||^2), a per-tensor kernel for the trust ratios, and
// the apply pass (re-reads p, m, v; writes p). Global clipping and loss-scale unscaling
// arrive folded into grad_scale; found_inf stops every kernel at its first instruction.
// Bytes per fp32 parameter: 24 (moments) + 16 (apply) = 40, plus 4 for the optimizer's
// global-norm pass when clipping. The two-pass structure is forced by the trust ratio:
// ||u|| of the whole tensor is needed before any element of p can move.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cuda/update_common.cuh"
#include "fastdyn/math/lamb.h"

namespace fastdyn {
namespace cuda {
namespace {

enum LambList { kP = 0, kG, kM, kV, kMaster, kStep, kLambDepth };

template <typename A>
struct LambCommon : SkipIfFoundInf {
  math::LambHyper<A> h;  // beta1's terms and weight_decay set on the device (hyper())
  ScalarRef beta1;
  ScalarRef weight_decay;
  bool grad_averaging;
  bool bias_correction;
  bool steps_double;

  __device__ __forceinline__ math::LambHyper<A> hyper() const {
    math::LambHyper<A> hh = math::lamb_with_beta1(h, beta1.get(), grad_averaging);
    hh.weight_decay = static_cast<A>(weight_decay.get());
    return hh;
  }
  __device__ __forceinline__ math::LambStepScalars<A> scalars(
      const math::LambHyper<A>& hh, const TensorListMeta<kLambDepth>& meta, int slot) const {
    const double step = read_scalar(meta.addr[kStep][slot], steps_double);
    return math::lamb_step_scalars<A>(hh, step, bias_correction);
  }
};

template <typename P, typename S, bool kHasMaster>
struct LambMomentsOp : LambCommon<typename OpMath<P>::type> {
  using A = typename OpMath<P>::type;
  ScalarRef grad_scale;
  double* partials;  // [chunk][3]: g^2, p^2, u^2

  __device__ __forceinline__ void operator()(const TensorListMeta<kLambDepth>& meta, ChunkRef c) const {
    const P* __restrict__ p = static_cast<const P*>(meta.addr[kP][c.slot]);
    const P* __restrict__ g = static_cast<const P*>(meta.addr[kG][c.slot]);
    S* __restrict__ m = static_cast<S*>(meta.addr[kM][c.slot]);
    S* __restrict__ v = static_cast<S*>(meta.addr[kV][c.slot]);
    const float* __restrict__ master = static_cast<const float*>(meta.addr[kMaster][c.slot]);
    const math::LambHyper<A> h = this->hyper();
    const auto s = this->scalars(h, meta, c.slot);
    const A inv = static_cast<A>(inverse_grad_scale(grad_scale));
    A g2 = A(0), p2 = A(0), u2 = A(0);
    struct Elem {
      A p, g, m, v;
    };
    for_chunk_elements(
        c.begin, c.end,
        [&](int64_t i) {
          return Elem{kHasMaster ? static_cast<A>(master[i]) : static_cast<A>(p[i]),
                      static_cast<A>(g[i]) * inv, static_cast<A>(m[i]), static_cast<A>(v[i])};
        },
        [&](int64_t i, Elem e) {
          math::lamb_moments(e.g, e.m, e.v, h);
          const S ms = static_cast<S>(e.m), vs = static_cast<S>(e.v);
          m[i] = ms;
          v[i] = vs;
          // from the stored (rounded) moments: what the apply pass will read back
          const A u = math::lamb_direction(e.p, static_cast<A>(ms), static_cast<A>(vs), h, s);
          g2 = math::fmadd(e.g, e.g, g2);
          p2 = math::fmadd(e.p, e.p, p2);
          u2 = math::fmadd(u, u, u2);
        });
    write_stats_partials(partials, c.global, g2, p2, u2);
  }
};

// With kStats (track_stats of 16-bit params without masters, whose rounding drops part of
// the update) the chunk's sum of squares of the stored change replaces partials' third
// column, which the ratio kernel has read by then.
template <typename P, typename S, bool kHasMaster, bool kStats>
struct LambApplyOp : LambCommon<typename OpMath<P>::type> {
  using A = typename OpMath<P>::type;
  ScalarRef lr;
  const double* ratios;
  double* partials;

  __device__ __forceinline__ void operator()(const TensorListMeta<kLambDepth>& meta, ChunkRef c) const {
    P* __restrict__ p = static_cast<P*>(meta.addr[kP][c.slot]);
    const S* __restrict__ m = static_cast<const S*>(meta.addr[kM][c.slot]);
    const S* __restrict__ v = static_cast<const S*>(meta.addr[kV][c.slot]);
    float* __restrict__ master = static_cast<float*>(meta.addr[kMaster][c.slot]);
    const math::LambHyper<A> h = this->hyper();
    const auto s = this->scalars(h, meta, c.slot);
    // lr * r in double, rounded once: the CPU kernel's step to the bit
    const A step = static_cast<A>(lr.get() * ratios[meta.tensor_id[c.slot]]);
    A change2 = A(0);
    struct Elem {
      A p, m, v;
    };
    for_chunk_elements(
        c.begin, c.end,
        [&](int64_t i) {
          return Elem{kHasMaster ? static_cast<A>(master[i]) : static_cast<A>(p[i]),
                      static_cast<A>(m[i]), static_cast<A>(v[i])};
        },
        [&](int64_t i, const Elem& e) {
          const A out = e.p - step * math::lamb_direction(e.p, e.m, e.v, h, s);
          if (kHasMaster) master[i] = static_cast<float>(out);
          p[i] = static_cast<P>(out);
          if constexpr (kStats) {
            const A change = held_after<P, kHasMaster>(out) - e.p;
            change2 = math::fmadd(change, change, change2);
          }
        });
    if constexpr (kStats) {
      __shared__ double shared[32];
      const double total = block_reduce(static_cast<double>(change2), SumOp{}, shared);
      if (threadIdx.x == 0) partials[3 * c.global + 2] = total;
    }
  }
};

// One block per tensor: trust ratio from the chunk partials (and ||update|| for stats).
// Adapting (weight_decay != 0 or always_adapt) is decided here, weight_decay being a tensor.
__global__ void __launch_bounds__(256) lamb_ratio_kernel(TensorListMeta<kLambDepth> meta, const double* partials,
                                                         double* ratios, double* update_norms, ScalarRef lr,
                                                         ScalarRef weight_decay, bool always_adapt,
                                                         bool trust_clip, SkipIfFoundInf guard) {
  if (guard.skip()) return;
  const bool adapt = always_adapt || weight_decay.get() != 0.0;
  __shared__ double shared[32];
  const int slot = blockIdx.x;
  const int64_t c0 = meta.chunk_offset + meta.chunk_begin[slot];
  const int64_t c1 = meta.chunk_offset + meta.chunk_begin[slot + 1];
  double p2 = 0.0, u2 = 0.0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    p2 += partials[3 * c + 1];
    u2 += partials[3 * c + 2];
  }
  p2 = block_reduce(p2, SumOp{}, shared);
  u2 = block_reduce(u2, SumOp{}, shared);
  if (threadIdx.x == 0) {
    const int id = meta.tensor_id[slot];
    const double un = math::fsqrt(u2);
    const double r = math::lamb_trust_ratio(math::fsqrt(p2), un, adapt, trust_clip);
    ratios[id] = r;
    if (update_norms) update_norms[id] = lr.get() * r * un;
  }
}

// lamb_moments_: one block per tensor sums its chunks' partials into sums[id] = (g^2, p^2,
// u^2); NaN when found_inf skips the step (the moment kernels then wrote no partials).
__global__ void __launch_bounds__(256) lamb_sums_kernel(TensorListMeta<kLambDepth> meta, const double* partials,
                                                        double* sums, SkipIfFoundInf guard) {
  const int slot = blockIdx.x;
  double* out = sums + 3 * int64_t(meta.tensor_id[slot]);
  if (guard.skip()) {
    if (threadIdx.x < 3) out[threadIdx.x] = __longlong_as_double(0x7ff8000000000000LL);
    return;
  }
  __shared__ double shared[32];
  const int64_t c0 = meta.chunk_offset + meta.chunk_begin[slot];
  const int64_t c1 = meta.chunk_offset + meta.chunk_begin[slot + 1];
  double acc[3] = {0.0, 0.0, 0.0};
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    for (int k = 0; k < 3; ++k) acc[k] += partials[3 * c + k];
  }
  for (int k = 0; k < 3; ++k) {
    const double total = block_reduce(acc[k], SumOp{}, shared);
    if (threadIdx.x == 0) out[k] = total;
  }
}

// What the three launchers pass to the kernels.
struct LambArgs {
  ScalarRef found_inf;
  ScalarRef grad_scale;  // moments pass
  ScalarRef lr;          // apply pass
  ScalarRef beta1;
  ScalarRef weight_decay;
  double beta2, eps;
  bool bias_correction;
  bool grad_averaging;
  bool steps_double;
  double* partials;      // moments pass: [chunk][3] = g^2, p^2, u^2
  const double* ratios;  // apply pass: trust ratio per tensor id
};

// Runs body(moments, apply) with both passes' ops built for the group's dtypes (as
// csrc/cpu/lamb.cpp's with_lamb_kernels); each launcher launches the ones it needs. With
// measure_applied, the apply op sums the stored change (LambApplyOp's kStats).
template <typename Body>
void with_lamb_ops(const UpdateGroup& grp, const LambArgs& a, bool measure_applied, Body&& body) {
  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    dispatch_flags(grp.has_master, measure_applied, [&](auto master_c, auto stats_c) {
      constexpr bool kM = decltype(master_c)::value;
      // beta1 and weight_decay are read on the device (LambCommon::hyper)
      const auto h = math::lamb_hyper<A>(0.0, a.beta2, a.grad_averaging, a.eps, 0.0);
      LambMomentsOp<P, S, kM> moments;
      LambApplyOp<P, S, kM, decltype(stats_c)::value> apply;
      auto set_common = [&](LambCommon<A>& op) {
        op.found_inf = a.found_inf;
        op.h = h;
        op.beta1 = a.beta1;
        op.weight_decay = a.weight_decay;
        op.grad_averaging = a.grad_averaging;
        op.bias_correction = a.bias_correction;
        op.steps_double = a.steps_double;
      };
      set_common(moments);
      set_common(apply);
      moments.grad_scale = a.grad_scale;
      moments.partials = a.partials;
      apply.lr = a.lr;
      apply.ratios = a.ratios;
      apply.partials = a.partials;
      body(moments, apply);
    });
  });
}

void lamb_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList master_params, at::TensorList state_steps,
           const at::Tensor& lr, const at::Tensor& beta1, double beta2, double eps,
           const at::Tensor& weight_decay, bool bias_correction, bool grad_averaging,
           bool trust_clip, bool always_adapt, const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats) {
  const UpdateGroup grp = check_lamb_args(params, grads, exp_avgs, exp_avg_sqs, master_params,
                                          state_steps, lr, beta1, weight_decay, grad_scale,
                                          found_inf, stats);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  const bool want_stats = stats.has_value();
  // 16-bit params without masters: ||update|| is the stored change, which the apply pass
  // measures; the others' is lr * r * ||u|| (to the rounding of p), from the ratio kernel
  const bool measure_applied = want_stats && grp.rounds_into_param();
  const auto fopts = lr.options().dtype(at::kDouble);
  at::Tensor partials = at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, fopts);
  at::Tensor ratios = at::empty({grp.size}, fopts);
  at::Tensor update_norms = want_stats && !measure_applied ? at::empty({grp.size}, fopts) : at::Tensor();
  // after the allocations: a call that fails leaves the steps as they were
  increment_steps(state_steps, found);
  double* ratios_ptr = ratios.data_ptr<double>();
  double* update_norms_ptr = update_norms.defined() ? update_norms.data_ptr<double>() : nullptr;
  const LambArgs args{found, scalar_ref(grad_scale), scalar_ref(lr), scalar_ref(beta1),
                      scalar_ref(weight_decay), beta2, eps, bias_correction, grad_averaging,
                      state_steps[0].scalar_type() == at::kDouble, partials.data_ptr<double>(),
                      ratios_ptr};
  const std::array<at::TensorList, kLambDepth> lists = {params, grads, exp_avgs, exp_avg_sqs,
                                                        master_params, state_steps};
  with_lamb_ops(grp, args, measure_applied, [&](const auto& moments, const auto& apply) {
    for_each_batch<kLambDepth>(lists, [&](const TensorListMeta<kLambDepth>& meta) {
      launch_apply(meta, moments);
      lamb_ratio_kernel<<<meta.n_tensors, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
          meta, args.partials, ratios_ptr, update_norms_ptr, args.lr, args.weight_decay,
          always_adapt, trust_clip, SkipIfFoundInf{found});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      launch_apply(meta, apply);
      if (want_stats) {
        launch_stats(meta, args.partials, ratios_ptr, update_norms_ptr, stats->data_ptr<float>(), found);
      }
    });
  });
}

// LAMB's two passes as two ops (see csrc/ops.cpp): sums to all-reduce between them.
at::Tensor lamb_moments_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList master_params,
                         at::TensorList state_steps, const at::Tensor& beta1, double beta2,
                         double eps, const at::Tensor& weight_decay, bool bias_correction,
                         bool grad_averaging, const c10::optional<at::Tensor>& grad_scale,
                         const c10::optional<at::Tensor>& found_inf) {
  const UpdateGroup grp = check_lamb_moments_args(params, grads, exp_avgs, exp_avg_sqs,
                                                  master_params, state_steps, beta1, weight_decay,
                                                  grad_scale, found_inf);
  const auto dopts = at::TensorOptions().dtype(at::kDouble).device(grp.device);
  at::Tensor sums = at::empty({grp.size, 3}, dopts);
  if (params.empty()) return sums;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  at::Tensor partials = at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, dopts);
  increment_steps(state_steps, found);
  const LambArgs args{found, scalar_ref(grad_scale), ScalarRef{}, scalar_ref(beta1),
                      scalar_ref(weight_decay), beta2, eps, bias_correction, grad_averaging,
                      state_steps[0].scalar_type() == at::kDouble, partials.data_ptr<double>(),
                      nullptr};
  const std::array<at::TensorList, kLambDepth> lists = {params, grads, exp_avgs, exp_avg_sqs,
                                                        master_params, state_steps};
  with_lamb_ops(grp, args, false, [&](const auto& moments, const auto&) {
    for_each_batch<kLambDepth>(lists, [&](const TensorListMeta<kLambDepth>& meta) {
      launch_apply(meta, moments);
      lamb_sums_kernel<<<meta.n_tensors, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
          meta, args.partials, sums.data_ptr<double>(), SkipIfFoundInf{found});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return sums;
}

void lamb_apply_(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList master_params, at::TensorList state_steps, const at::Tensor& lr,
                 const at::Tensor& trust_ratios, const at::Tensor& beta1, double beta2,
                 double eps, const at::Tensor& weight_decay, bool bias_correction,
                 const c10::optional<at::Tensor>& found_inf) {
  const UpdateGroup grp = check_lamb_apply_args(params, exp_avgs, exp_avg_sqs, master_params,
                                                state_steps, lr, trust_ratios, beta1, weight_decay,
                                                found_inf);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const at::Tensor ratios = trust_ratios.to(at::kDouble).contiguous();
  // grad_averaging only enters the moments pass
  const LambArgs args{scalar_ref(found_inf), ScalarRef{}, scalar_ref(lr), scalar_ref(beta1),
                      scalar_ref(weight_decay), beta2, eps, bias_correction, true,
                      state_steps[0].scalar_type() == at::kDouble, nullptr, ratios.data_ptr<double>()};
  // the gradients are not read: params stand in for the list
  const std::array<at::TensorList, kLambDepth> lists = {params, params, exp_avgs, exp_avg_sqs,
                                                        master_params, state_steps};
  with_lamb_ops(grp, args, false, [&](const auto&, const auto& apply) {
    for_each_batch<kLambDepth>(lists, [&](const TensorListMeta<kLambDepth>& meta) { launch_apply(meta, apply); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("lamb_", &lamb_);
  m.impl("lamb_moments_", &lamb_moments_);
  m.impl("lamb_apply_", &lamb_apply_);
}

}  // namespace cuda
}  // namespace fastdyn
