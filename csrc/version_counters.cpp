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

#include <vector>

namespace fastdyn {
namespace {

void bump(const c10::IValue& v) {
  if (!v.isTensor()) return;
  c10::TensorImpl* t = v.unsafeToTensorImpl();
  if (t != c10::UndefinedTensorImpl::singleton()) t->bump_version();
}

void run_and_bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                   torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t start = stack->size() - arguments.size();
  // The op pops its arguments: keep what it writes. Copies of the IValues share their lists
  // (one refcount each): copying every tensor into vectors took ~8% of an adam_ call on
  // 1,000 one-element tensors.
  std::vector<c10::IValue> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::AliasInfo* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite()) written.push_back((*stack)[start + i]);
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  // only once the op has succeeded: a refused call changes nothing, its versions included
  for (const c10::IValue& v : written) {
    if (v.isTensorList()) {
      for (const c10::IValue& t : v.toListRef()) bump(t);
    } else {
      bump(v);  // (None: nothing)
    }
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
