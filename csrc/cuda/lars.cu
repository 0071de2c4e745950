// Fused LARS on CUDA: per-tensor ||p||, ||g|| (skipped with the caller's ratios), a per-tensor
// kernel for the trust ratios, then the trust-scaled SGD-momentum update. weight_decay is a
// device tensor, so whether to adapt (weight_decay != 0 or always_adapt) is decided on the
// device, and the norm pass runs whenever the caller gives no ratios. (The LARS optimizer runs
// sgd_ instead when it knows on the host that there is no adaptation.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/cuda/momentum_update.cuh"
#include "fastdyn/cuda/update_common.cuh"
#include "fastdyn/math/lars.h"

namespace fastdyn {
namespace cuda {
namespace {

template <typename P, bool kHasMaster>
struct LarsNormsOp : SkipIfFoundInf {
  using A = typename OpMath<P>::type;
  ScalarRef grad_scale;
  double* partials;  // [chunk][3]: g^2, p^2, (update^2 later)

  __device__ __forceinline__ void operator()(const TensorListMeta<kMomentumDepth>& meta, ChunkRef c) const {
    const P* __restrict__ p = static_cast<const P*>(meta.addr[kP][c.slot]);
    const P* __restrict__ g = static_cast<const P*>(meta.addr[kG][c.slot]);
    const float* __restrict__ master = static_cast<const float*>(meta.addr[kMaster][c.slot]);
    // The scaled g is squared and summed in double, then unscaled, as on the CPU
    // (sum_squares_double): squared unscaled in float, a tensor of gradients under ~2.6e-23
    // had ||g|| = 0 (r = 1); squared scaled in float, a scale of 2^76 made a gradient of 0.1
    // an inf square (r = 0). One double FMA per element, in a kernel bound by memory.
    const double inv = inverse_grad_scale(grad_scale);
    double g2 = 0.0;
    A p2 = A(0);
    struct Elem {
      A p, g;
    };
    for_chunk_elements(
        c.begin, c.end,
        [&](int64_t i) {
          return Elem{kHasMaster ? static_cast<A>(master[i]) : static_cast<A>(p[i]),
                      static_cast<A>(g[i])};
        },
        [&](int64_t, const Elem& e) {
          g2 = math::fmadd(static_cast<double>(e.g), static_cast<double>(e.g), g2);
          p2 = math::fmadd(e.p, e.p, p2);
        });
    __shared__ double shared[32];
    const double g2s = block_reduce(g2, SumOp{}, shared) * inv * inv;
    const double p2s = block_reduce(double(p2), SumOp{}, shared);
    if (threadIdx.x == 0) {
      partials[3 * c.global + 0] = g2s;
      partials[3 * c.global + 1] = p2s;
    }
  }
};

// d = (g + weight_decay * p) * r with tensor t's trust ratio r (ratios[t]; null: r = 1),
// or g without adaptation (weight_decay 0 and not always_adapt).
template <typename A>
struct LarsDirection {
  ScalarRef weight_decay;
  bool always_adapt;
  const double* ratios;
  __device__ __forceinline__ auto for_tensor(int id) const {
    const double wd_value = weight_decay.get();
    const A wd = static_cast<A>(wd_value), r = ratios ? static_cast<A>(ratios[id]) : A(1);
    const bool adapt_ = always_adapt || wd_value != 0.0;
    return [wd, r, adapt_](A pv, A gv) { return math::lars_direction(pv, gv, wd, r, adapt_); };
  }
};

__global__ void __launch_bounds__(256) lars_ratio_kernel(TensorListMeta<kMomentumDepth> meta, const double* partials,
                                                         double* ratios, ScalarRef lr, double trust_coeff,
                                                         ScalarRef weight_decay, double eps,
                                                         bool always_adapt, bool trust_clip,
                                                         SkipIfFoundInf guard) {
  if (guard.skip()) return;
  const double wd = weight_decay.get();
  const bool adapt = always_adapt || wd != 0.0;
  __shared__ double shared[32];
  const int slot = blockIdx.x;
  const int64_t c0 = meta.chunk_offset + meta.chunk_begin[slot];
  const int64_t c1 = meta.chunk_offset + meta.chunk_begin[slot + 1];
  double g2 = 0.0, p2 = 0.0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    g2 += partials[3 * c + 0];
    p2 += partials[3 * c + 1];
  }
  g2 = block_reduce(g2, SumOp{}, shared);
  p2 = block_reduce(p2, SumOp{}, shared);
  if (threadIdx.x == 0) {
    ratios[meta.tensor_id[slot]] = math::lars_trust_ratio(math::fsqrt(p2), math::fsqrt(g2), trust_coeff,
                                                          wd, eps, lr.get(), adapt, trust_clip);
  }
}

void lars_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
           at::TensorList master_params, const at::Tensor& lr, const at::Tensor& momentum,
           double dampening, const at::Tensor& weight_decay, bool nesterov, double trust_coeff,
           double eps,
           bool trust_clip, bool always_adapt, bool is_first_step,
           const c10::optional<at::Tensor>& grad_scale,
           const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& stats,
           const c10::optional<at::Tensor>& trust_ratios) {
  const UpdateGroup grp = check_momentum_args(params, grads, momentum_buffers, master_params, lr,
                                              momentum, weight_decay, grad_scale, found_inf, stats,
                                              trust_ratios);
  if (trust_ratios.has_value()) check_trust_ratios(*trust_ratios, grp);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(grp.device);
  const ScalarRef found = scalar_ref(found_inf);
  const bool want_stats = stats.has_value();
  // The caller's ratios (norms all-reduced over shards) need no norm pass; r = 1 without
  // adaptation, whatever they say (LarsDirection decides on the device).
  const bool given_ratios = trust_ratios.has_value();
  const bool need_norms = !given_ratios;
  const auto fopts = lr.options().dtype(at::kDouble);
  at::Tensor partials = need_norms || want_stats
                            ? at::empty({3 * std::max<int64_t>(count_chunks(params), 1)}, fopts)
                            : at::Tensor();
  at::Tensor ratios = given_ratios ? trust_ratios->to(at::kDouble).contiguous()
                                   : (need_norms ? at::empty({grp.size}, fopts) : at::Tensor());
  if (given_ratios && !always_adapt) {
    // r = 1 without adaptation whatever they say (as the stats show it): weight_decay 0,
    // which only the device knows
    ratios = at::where(weight_decay.ne(0), ratios, at::ones_like(ratios));
  }
  double* partials_ptr = partials.defined() ? partials.data_ptr<double>() : nullptr;
  double* ratios_ptr = ratios.defined() ? ratios.data_ptr<double>() : nullptr;
  const std::array<at::TensorList, kMomentumDepth> lists = {
      params, grads, momentum_buffers, master_params};

  dispatch_param_state(grp.param_dtype, grp.state_dtype, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using A = typename OpMath<P>::type;
    dispatch_flags(grp.has_master, want_stats, [&](auto master_c, auto stats_c) {
      constexpr bool kM = decltype(master_c)::value;
      LarsNormsOp<P, kM> norms;
      norms.found_inf = found;
      norms.grad_scale = scalar_ref(grad_scale);
      norms.partials = partials_ptr;
      // the update pass also writes all three statistics (as SGD's and the CPU kernel's): the
      // norm pass runs only when the ratios need it
      const auto update = make_momentum_update<P, S, kM, decltype(stats_c)::value>(
          LarsDirection<A>{scalar_ref(weight_decay), always_adapt, ratios_ptr}, found, momentum,
          !momentum_buffers.empty(), dampening, nesterov, is_first_step, lr, grad_scale,
          partials_ptr);
      for_each_batch<kMomentumDepth>(lists, [&](const TensorListMeta<kMomentumDepth>& meta) {
        if (need_norms) {
          launch_apply(meta, norms);
          lars_ratio_kernel<<<meta.n_tensors, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
              meta, partials_ptr, ratios_ptr, scalar_ref(lr), trust_coeff, scalar_ref(weight_decay),
              eps, always_adapt, trust_clip, SkipIfFoundInf{found});
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        launch_apply(meta, update);
        if (want_stats) launch_stats(meta, partials_ptr, ratios_ptr, nullptr, stats->data_ptr<float>(), found);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CUDA, m) {
  m.impl("lars_", &lars_);
}

}  // namespace cuda
}  // namespace fastdyn
