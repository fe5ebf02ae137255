// Every operator schema of the `sarl` library, in one place (the torchvision pattern).
// Kernels are registered per backend next to their sources:
//   TORCH_LIBRARY_IMPL(sarl, CPU, m)  in csrc/<op>/<op>_cpu.cpp
//   TORCH_LIBRARY_IMPL(sarl, CUDA, m) in csrc/<op>/<op>_cuda.cu
// Autograd and fake (meta) implementations are registered from Python
// (projects/SARL/sarl/ops/), with torch.library.register_autograd / register_fake.
#include <Python.h>
#include <torch/library.h>

namespace sarl {

// Which backends this build carries (queried by sarl.ops.extension_info()).
static bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(sarl, m) {
  m.def("_compiled_with_cuda() -> bool", &compiled_with_cuda);

  // ---- SAL: scale-adaptive IoU loss (csrc/sal) -------------------------------------------
  // BEGIN SAL SCHEMAS
  // END SAL SCHEMAS

  // ---- SARL relay: pooled descriptors and gate (csrc/relay) ------------------------------
  // BEGIN RELAY SCHEMAS
  // END RELAY SCHEMAS
}

}  // namespace sarl

// `import sarl._C` only needs a module object: loading the library runs the registrations
// above, and the ops are then reached through torch.ops.sarl.*. No pybind11 needed.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
