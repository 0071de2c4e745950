// Argument checks shared by every launcher (CPU and CUDA). Each message names the argument
// and the offending index/value, and raises ValueError or TypeError in Python.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
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

// One list (or several) that an op writes: no two of its tensors may share memory, or the
// chunks of both run at once and updates are lost (multi_tensor_scale_([x, x]) differed
// from torch._foreach_mul_ in 15 of 30 CPU runs). Sorting the byte ranges costs n log n
// on the host, once per call.
struct WrittenList {
  const char* name;
  at::TensorList tensors;
};

inline void check_no_shared_memory(c10::ArrayRef<WrittenList> lists) {
  // (first byte, one past the last byte, list, index); the tensors are dense, so a
  // tensor's bytes are the nbytes from its data pointer
  std::vector<std::tuple<uintptr_t, uintptr_t, size_t, size_t>> ranges;
  std::vector<const char*> names;
  for (const WrittenList& l : lists) {
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      if (t.numel() == 0) continue;
      const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
      ranges.emplace_back(begin, begin + static_cast<uintptr_t>(t.nbytes()), names.size(), i);
    }
    names.push_back(l.name);
  }
  std::sort(ranges.begin(), ranges.end());
  // sorted by first byte, any overlap shows in a neighbouring pair
  for (size_t k = 1; k < ranges.size(); ++k) {
    const auto& a = ranges[k - 1];
    const auto& b = ranges[k];
    TORCH_CHECK_VALUE(std::get<0>(b) >= std::get<1>(a), names[std::get<2>(a)], "[",
                      std::get<3>(a), "] and ", names[std::get<2>(b)], "[", std::get<3>(b),
                      "] share memory (the same tensor twice, or overlapping views); the op "
                      "writes both, so pass each tensor once");
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
