// Argument checks shared by every launcher (CPU and CUDA). Each message names the argument
// and the offending index/value, and raises ValueError or TypeError in Python.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace fastdyn {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Every tensor of `ts` is a strided, non-overlapping-and-dense, real floating tensor on
// `device` (the first tensor's device when nullopt). Returns the common device.
inline c10::optional<at::Device> check_float_list(const char* name, at::TensorList ts,
                                                  c10::optional<at::Device> device = c10::nullopt) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const at::Tensor& t = ts[i];
    TORCH_CHECK_VALUE(t.defined(), name, "[", i, "] is undefined");
    TORCH_CHECK_VALUE(t.layout() == at::kStrided, name, "[", i,
                      "] is sparse or not strided (layout ", t.layout(),
                      "); fastdyn ops need dense tensors");
    TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), name, "[", i, "] has dtype ",
                     t.scalar_type(),
                     "; fastdyn ops take float32, float16, bfloat16 or float64 tensors");
    TORCH_CHECK_VALUE(t.is_non_overlapping_and_dense(), name, "[", i,
                      "] is not dense (a view with gaps or overlaps, strides ", t.strides(),
                      "); pass a contiguous tensor");
    if (!device.has_value()) device = t.device();
    TORCH_CHECK_VALUE(t.device() == *device, name, "[", i, "] is on ", t.device(),
                      " but the other tensors are on ", *device);
  }
  return device;
}

inline void check_same_length(const char* name, size_t n, const char* ref_name, size_t ref_n) {
  TORCH_CHECK_VALUE(n == ref_n, name, " has ", n, " tensors but ", ref_name, " has ", ref_n);
}

// Same walk order in memory: the strides agree wherever the size is above 1 (a size-1
// dim's stride is arbitrary, torch gives (1, 40) both (40, 1) and (1, 1)); an empty pair
// has no elements to walk.
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return true;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// `ts` pairs element-wise with `ref`: same length, shape and strides (the kernels walk
// both with one index), on the same device.
inline void check_like(const char* name, at::TensorList ts, const char* ref_name,
                       at::TensorList ref) {
  check_same_length(name, ts.size(), ref_name, ref.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK_VALUE(ts[i].sizes() == ref[i].sizes(), name, "[", i, "] has shape ",
                      ts[i].sizes(), " but ", ref_name, "[", i, "] has shape ", ref[i].sizes());
    TORCH_CHECK_VALUE(same_layout(ts[i], ref[i]), name, "[", i, "] has strides ",
                      ts[i].strides(), " but ", ref_name, "[", i, "] has strides ",
                      ref[i].strides(), "; both must have the same memory layout");
  }
}

// What an op writes, and the scalars it reads while writing, may not share memory: the
// chunks of two written entries run at once and updates are lost (multi_tensor_scale_([x,
// x]) differed from torch._foreach_mul_ in 15 of 30 CPU runs), and a CUDA block reads a
// scalar after other blocks may have written it (scale_([x], x[0])).
struct MemoryUse {
  const char* name;
  at::TensorList tensors;
  bool written = true;
  bool single = false;  // one tensor (a scalar argument, stats): named without an index
};

inline MemoryUse written_list(const char* name, at::TensorList ts) { return {name, ts, true, false}; }
inline MemoryUse written_tensor(const char* name, const at::Tensor& t) { return {name, t, true, true}; }
inline MemoryUse read_tensor(const char* name, const at::Tensor& t) { return {name, t, false, true}; }

// What an op writes must be writable in place. Under grad mode it may not require grad: the
// ops have no derivative, so torch's refusal of an in-place write to a leaf that requires
// grad did not happen, and a non-leaf written in place gave a silently wrong gradient (torch
// records the write). Outside inference mode it may not be an inference tensor: the Triton
// kernels wrote one, and the native op's version bump refused it only after writing.
inline void check_written_are_writable(c10::ArrayRef<MemoryUse> uses) {
  const bool grad_mode = at::GradMode::is_enabled();
  const bool inference_mode = c10::InferenceMode::is_enabled();
  for (const MemoryUse& u : uses) {
    if (!u.written) continue;
    for (size_t i = 0; i < u.tensors.size(); ++i) {
      const at::Tensor& t = u.tensors[i];
      if (!t.defined()) continue;
      TORCH_CHECK(!grad_mode || !t.requires_grad(), u.name,
                  u.single ? std::string() : "[" + std::to_string(i) + "]",
                  " requires grad and the op writes it in place, which has no derivative: call "
                  "it under torch.no_grad(), as optimizer steps and clip_grad_norm_ are");
      TORCH_CHECK(inference_mode || !t.is_inference(), u.name,
                  u.single ? std::string() : "[" + std::to_string(i) + "]",
                  " is an inference tensor (made under torch.inference_mode): it cannot be "
                  "updated in place outside that mode; clone it first");
    }
  }
}

inline void check_no_shared_memory(c10::ArrayRef<MemoryUse> uses) {
  check_written_are_writable(uses);
  struct Span {
    uintptr_t begin, end;  // dense tensors: their nbytes from the data pointer
    uint32_t use, index;
  };
  const auto by_begin = [](const Span& a, const Span& b) { return a.begin < b.begin; };
  std::vector<Span> spans;
  for (const MemoryUse& u : uses) spans.reserve(spans.size() + u.tensors.size());
  // single tensors first, so that each list's merge below is the only one that walks it
  for (const bool singles : {true, false}) {
    for (uint32_t k = 0; k < uses.size(); ++k) {
      if (uses[k].single != singles) continue;
      const auto run = static_cast<std::ptrdiff_t>(spans.size());
      for (uint32_t i = 0; i < uses[k].tensors.size(); ++i) {
        const at::Tensor& t = uses[k].tensors[i];
        const size_t bytes = t.defined() ? t.nbytes() : 0;
        if (bytes == 0) continue;
        const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
        spans.push_back({begin, begin + bytes, k, i});
      }
      // A list allocated in order is one sorted run, merged into the runs before it in
      // linear time: ~25 ns a tensor (scale_ of 8,000 small tensors, whose per-call cost is
      // ~100 ns a tensor without this check); a shuffled list, sorted, ~60 ns.
      const auto mid = spans.begin() + run;
      if (!std::is_sorted(mid, spans.end(), by_begin)) std::sort(mid, spans.end(), by_begin);
      std::inplace_merge(spans.begin(), mid, spans.end(), by_begin);
    }
  }
  // One sweep by first byte: a span that starts before the furthest end seen of a span it
  // may not overlap (any, if it is written; a written one, if it is read) overlaps it.
  const auto describe = [&](const Span& s) {
    const MemoryUse& u = uses[s.use];
    return u.single ? std::string(u.name) : std::string(u.name) + "[" + std::to_string(s.index) + "]";
  };
  const Span* furthest_any = nullptr;
  const Span* furthest_written = nullptr;
  for (const Span& s : spans) {
    const bool written = uses[s.use].written;
    const Span* other = written ? furthest_any : furthest_written;
    TORCH_CHECK_VALUE(other == nullptr || s.begin >= other->end, describe(*other), " and ",
                      describe(s),
                      " share memory (the same tensor twice, or overlapping views) and the op "
                      "writes ", written && uses[other->use].written ? "both" : "one of them",
                      ": pass separate tensors");
    if (furthest_any == nullptr || s.end > furthest_any->end) furthest_any = &s;
    if (written && (furthest_written == nullptr || s.end > furthest_written->end)) {
      furthest_written = &s;
    }
  }
}

// Every tensor of `ts` has one dtype; returns it.
inline at::ScalarType common_dtype(const char* name, at::TensorList ts) {
  TORCH_CHECK_VALUE(!ts.empty(), name, " is empty");
  at::ScalarType t = ts[0].scalar_type();
  for (size_t i = 1; i < ts.size(); ++i) {
    TORCH_CHECK_TYPE(ts[i].scalar_type() == t, name, "[", i, "] has dtype ", ts[i].scalar_type(),
                     " but ", name, "[0] has ", t, "; split the list by dtype");
  }
  return t;
}

// A one-element floating tensor (lr, grad_scale, found_inf, step) on `device`.
inline void check_scalar_tensor(const char* name, const at::Tensor& t, at::Device device) {
  TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
  TORCH_CHECK_VALUE(t.numel() == 1, name, " must hold one value, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, name, " is on ", t.device(),
                    " but the tensors it applies to are on ", device);
}

// The unscale op writes found_inf as GradScaler's is: float32, on every backend.
inline void check_found_inf_dtype(const at::Tensor& found_inf) {
  TORCH_CHECK_TYPE(found_inf.scalar_type() == at::kFloat,
                   "found_inf must be float32 (as GradScaler's), got ", found_inf.scalar_type());
}

inline void check_norm_ord(double ord) {
  TORCH_CHECK_VALUE(ord == 2.0 || (std::isinf(ord) && ord > 0), "ord must be 2 or inf, got ", ord,
                    " (other norms go through fastdyn.reference)");
}

}  // namespace fastdyn
