// The Python module fastdyn._C. Importing it loads this library, whose static
// initialisers register the fastdyn ops (TORCH_LIBRARY); the Python functions here describe
// the build or take host work off an optimizer step (TensorRefs, the plan's checks). Ops are
// never pybind11 functions: torch.compile must see them.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <cstdint>
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

// The optimizer plan's checks, every eager step, that nothing was swapped in since the plan
// was built; in Python they took 217 us of an 820 us AdamW step on 1,000 one-element params
// (chain/map over the state dicts' values, ~35 ns a value; Tensor.data_ptr, ~60 ns a param),
// here 55.

// Whether the values of `dicts`, in order, are the objects of `values`.
bool dict_values_are(const py::tuple& dicts, const py::list& values) {
  const Py_ssize_t n = PyList_GET_SIZE(values.ptr());
  Py_ssize_t k = 0;
  for (const py::handle d : dicts) {
    if (!PyDict_Check(d.ptr())) return false;
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d.ptr(), &pos, &key, &value)) {
      if (k == n || PyList_GET_ITEM(values.ptr(), k) != value) return false;
      ++k;
    }
  }
  return k == n;
}

// The data addresses of tensors with memory of their own (a param given new storage by
// `p.data = x` or `model.half()` is the same object at a new address).
struct DataAddresses {
  explicit DataAddresses(const py::list& tensors) {
    addresses.reserve(tensors.size());
    for (const py::handle t : tensors) addresses.push_back(address_of(t));
  }
  bool matches(const py::list& tensors) const {
    if (tensors.size() != addresses.size()) return false;
    size_t i = 0;
    for (const py::handle t : tensors) {
      if (address_of(t) != addresses[i++]) return false;
    }
    return true;
  }
  // (const_data_ptr: reading an address must not materialize a copy-on-write tensor)
  static uintptr_t address_of(py::handle t) {
    if (!THPVariable_Check(t.ptr())) throw py::type_error("DataAddresses: expected tensors");
    return reinterpret_cast<uintptr_t>(THPVariable_Unpack(t.ptr()).const_data_ptr());
  }
  std::vector<uintptr_t> addresses;
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
  m.def("dict_values_are", &dict_values_are,
        "whether the values of a tuple of dicts, in order, are the objects of a list");
  py::class_<DataAddresses>(m, "DataAddresses", "data addresses of tensors (see module.cpp)")
      .def(py::init<const py::list&>())
      .def("matches", &DataAddresses::matches, "whether the tensors of a list are still there");
}
