#include "python/src/saved_tensor_packing.h"

#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>

#include "hooks/engine.h"
#include "python/src/python_errors.h"

namespace actmem::python {
namespace {

using torch::autograd::SavedVariableHooks;

constexpr const char* kCapsuleName = "actmem.saved_tensor";

// Where no scope is active on the thread: the tensor as autograd would keep it.
class PlainHooks final : public SavedVariableHooks {
 public:
  void call_pack_hook(const at::Tensor& tensor) override { tensor_ = tensor.detach(); }
  at::Tensor call_unpack_hook() override { return tensor_; }

 private:
  at::Tensor tensor_;
};

void destroy_capsule(PyObject* capsule) {
  delete static_cast<SavedVariableHooks*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

PyObject* pack(PyObject* /*module*/, PyObject* tensor) {
  try {
    if (!THPVariable_Check(tensor)) {
      PyErr_SetString(PyExc_TypeError, "actmem: pack expects a Tensor");
      return nullptr;
    }
    std::unique_ptr<SavedVariableHooks> hooks = detail::hooks_for_this_thread();
    if (!hooks) hooks = std::make_unique<PlainHooks>();
    hooks->call_pack_hook(THPVariable_Unpack(tensor));
    PyObject* capsule = PyCapsule_New(hooks.get(), kCapsuleName, &destroy_capsule);
    if (capsule != nullptr) hooks.release();
    return capsule;
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

PyObject* unpack(PyObject* /*module*/, PyObject* capsule) {
  auto* hooks = static_cast<SavedVariableHooks*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (hooks == nullptr) return nullptr;  // not one of ours: PyCapsule_GetPointer set the error
  try {
    at::Tensor tensor;
    {
      pybind11::gil_scoped_release no_gil;
      tensor = hooks->call_unpack_hook();
    }
    return THPVariable_Wrap(std::move(tensor));
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

PyMethodDef g_pack_def = {"pack", &pack, METH_O,
                          "actmem's pack hook: returns what unpack() turns back into the tensor"};
PyMethodDef g_unpack_def = {"unpack", &unpack, METH_O,
                            "actmem's unpack hook: the tensor pack() was given"};

}  // namespace

PyObject* make_pack_function(PyObject* module) {
  return PyCFunction_NewEx(&g_pack_def, nullptr, module);
}

PyObject* make_unpack_function(PyObject* module) {
  return PyCFunction_NewEx(&g_unpack_def, nullptr, module);
}

}  // namespace actmem::python
