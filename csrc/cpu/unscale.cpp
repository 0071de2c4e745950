// multi_tensor_unscale_norm_ on the CPU: one read and one write of every gradient give
// the unscaled gradients, the found_inf flag and the norms of the unscaled gradients.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fastdyn/norm_checks.h"
#include "fastdyn/cpu/convert.h"
#include "fastdyn/cpu/norm_kernels.h"
#include "fastdyn/cpu/lanes.h"

namespace fastdyn {
namespace cpu {
namespace {

// The norm is of the stored (rounded) unscaled values, read back after the store. The inf
// check sums raw * 0 (NaN exactly when raw is inf or NaN). The loop with a bool flag and one
// double sum ran scalar: fp32 unscale + norm took 1.5x torch's two separate ops, fp16 7x.
template <NormKind K, typename T>
double unscale_chunk(T* __restrict__ x, int64_t n, double inv_scale, bool* nonfinite) {
  using A = typename OpMath<T>::type;
  const A s = static_cast<A>(inv_scale);
  const auto sums = lane_norm_partial<K, A, WideLanes<T>>(n, [&]<typename L>(int64_t i, L& probe) {
    const L raw = load_lanes<L>(x + i);
    probe = raw * A(0);
    store_lanes(x + i, raw * s);
    return load_lanes<L>(x + i);
  });
  *nonfinite = !math::is_finite(sums[1]);
  return sums[0];
}

std::tuple<at::Tensor, at::Tensor> multi_tensor_unscale_norm_(at::TensorList tensors,
                                                              const at::Tensor& inv_scale,
                                                              const at::Tensor& found_inf,
                                                              double ord, bool per_tensor) {
  check_unscale_norm_args(tensors, inv_scale, found_inf, ord);
  // kept in double: float64 gradients are unscaled by the float64 value, the others by its
  // float32 rounding (as GradScaler's float32 inv_scale)
  const double inv = scalar_value(inv_scale);

  ChunkPlan plan = plan_chunks(tensors);
  std::vector<double> partials(plan.chunks.size());
  std::unique_ptr<bool[]> bad(new bool[plan.chunks.size()]());
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  at::Tensor total = at::empty({}, opts);
  at::Tensor per = at::empty({per_tensor ? static_cast<int64_t>(tensors.size()) : 0}, opts);
  std::vector<double> per_partials(tensors.size());

  dispatch_norm_kind(ord, [&](auto kind) {
    constexpr NormKind K = decltype(kind)::value;
    for_each_chunk(plan, [&](const Chunk& c, int64_t i) {
      const at::Tensor& t = tensors[c.tensor];
      dispatch_float(t.scalar_type(), "tensors", [&](auto tag) {
        using T = typename decltype(tag)::type;
        partials[i] = unscale_chunk<K>(ptr<T>(t) + c.begin, c.end - c.begin, inv, &bad[i]);
      });
    });
    const double tot = reduce_partials<K>(plan, partials, per_partials.data());
    total.fill_(math::norm_finish<K>(tot));
    if (per_tensor) {
      float* out = per.data_ptr<float>();
      for (size_t t = 0; t < tensors.size(); ++t) out[t] = math::norm_finish<K>(per_partials[t]);
    }
  });
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    if (bad[i]) {
      set_scalar_value(found_inf, 1.0);
      break;
    }
  }
  return {total, per};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, CPU, m) {
  m.impl("multi_tensor_unscale_norm_", &multi_tensor_unscale_norm_);
}

}  // namespace cpu
}  // namespace fastdyn
