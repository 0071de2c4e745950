// The Python module fastdyn._C. Importing it loads this library, whose static
// initialisers register the fastdyn ops (TORCH_LIBRARY); the Python functions here describe
// the build, and TensorRefs speeds up calling the ops. Ops are never pybind11 functions:
// torch.compile must see them.
#include <torch/extension.h>

#include <string>
#include <vector>

namespace {

std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
#ifdef FASTDYN_CUDA_ARCHS
  std::string s = FASTDYN_CUDA_ARCHS;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(';', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
#endif
  return out;
}

// C++ references to tensors that every step passes to the ops (an optimizer's state). A
// tensor referenced by its Python object alone changes hands each time a call's argument
// list references it (torch then keeps the Python object alive for C++) and back when the
// op drops the list, with the GIL released: a GIL round trip per tensor, 27% of an adam_
// call on 1,000 one-element tensors (0.69 ms; 0.51 with the state held here).
struct TensorRefs {
  explicit TensorRefs(std::vector<at::Tensor> held) : tensors(std::move(held)) {}
  std::vector<at::Tensor> tensors;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdyn kernels; the ops live in torch.ops.fastdyn";
#ifdef FASTDYN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef FASTDYN_CUDA_VERSION
  m.attr("cuda_version") = std::string(FASTDYN_CUDA_VERSION);
#else
  m.attr("cuda_version") = py::none();
#endif
  m.attr("torch_version") = std::string(FASTDYN_TORCH_VERSION);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("cuda_archs", &cuda_archs, "CUDA architectures the kernels were compiled for");
  py::class_<TensorRefs>(m, "TensorRefs", "C++ references to tensors (see module.cpp)")
      .def(py::init<std::vector<at::Tensor>>())
      .def("__len__", [](const TensorRefs& r) { return r.tensors.size(); });
}
