// Version counters of what the ops write. torch's in-place and foreach ops bump the version
// of every tensor they modify, so that autograd refuses a backward through a tensor changed
// after it was saved ("modified by an inplace operation": a step between a forward and its
// backward). The dispatcher does not do this for extension ops, whose ADInplaceOrView key
// falls through: this kernel bumps, after the op succeeded, each tensor of every argument
// the schema marks as written (Tensor(a!)[], Tensor(b!), Tensor(c!)?).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

namespace fastdyn {
namespace {

void bump(const at::Tensor& t) {
  if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}

// The tensors of a written argument: Tensor(a!), Tensor(a!)[], Tensor(a!)? (none if None).
std::vector<at::Tensor> tensors_of(const c10::IValue& v) {
  if (v.isTensor()) return {v.toTensor()};
  if (v.isTensorList()) return v.toTensorList().vec();
  return {};
}

void run_and_bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                   torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t start = stack->size() - arguments.size();
  // the op pops its arguments: keep what it writes, with the argument's name
  struct Written {
    const std::string& name;
    bool is_list;
    std::vector<at::Tensor> tensors;
  };
  std::vector<Written> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::AliasInfo* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite()) {
      const c10::IValue& v = (*stack)[start + i];
      written.push_back({arguments[i].name(), v.isTensorList(), tensors_of(v)});
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  // only once the op has succeeded: a refused call changes nothing, its versions included
  for (const Written& w : written) {
    for (const at::Tensor& t : w.tensors) bump(t);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdyn, ADInplaceOrView, m) {
  for (const char* name : {"multi_tensor_scale_", "multi_tensor_unscale_norm_", "clip_grad_norm_",
                           "adam_", "sgd_", "lamb_", "lars_", "lamb_moments_", "lamb_apply_"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&run_and_bump_written_versions>());
  }
}

}  // namespace fastdyn
