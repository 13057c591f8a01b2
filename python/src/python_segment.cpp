#include "python/src/python_segment.h"

#include <memory>

#include "hooks/segment.h"
#include "hooks/segment_module.h"
#include "python/src/python_errors.h"

namespace py = pybind11;

namespace actmem::python {
namespace {

// A Python object that C++ may copy, keep and drop on any thread: the last owner takes the GIL
// to let it go. (At exit, after the interpreter is gone, it is left as it is.)
class SharedPyObject {
 public:
  explicit SharedPyObject(py::object object)
      : object_(new py::object(std::move(object)), [](py::object* held) {
          if (!Py_IsInitialized()) return;
          py::gil_scoped_acquire gil;
          delete held;
        }) {}
  const py::object& get() const { return *object_; }

 private:
  std::shared_ptr<py::object> object_;
};

// An nn.Module as the rerun sees it. Each call takes the GIL; the flags are read and written one
// module at a time (module.training), so each keeps its own.
class PySegmentModule final : public SegmentModule {
 public:
  explicit PySegmentModule(py::object module) : module_(std::move(module)) {}

  const void* identity() const override { return module_.get().ptr(); }

  std::vector<bool> training_flags() const override {
    py::gil_scoped_acquire gil;
    std::vector<bool> flags;
    for (py::handle m : module_.get().attr("modules")()) flags.push_back(m.attr("training").cast<bool>());
    return flags;
  }

  // Called from a destructor too (ForwardContext::Rerun's): an error is reported, not thrown.
  void set_training_flags(const std::vector<bool>& flags) override {
    py::gil_scoped_acquire gil;
    try {
      std::size_t i = 0;
      for (py::handle m : module_.get().attr("modules")()) {
        if (i < flags.size()) m.attr("training") = py::bool_(flags[i++]);
      }
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("actmem: restoring a segment's training flags");
    }
  }

  std::vector<at::Tensor> buffers() const override {
    py::gil_scoped_acquire gil;
    std::vector<at::Tensor> buffers;
    for (py::handle b : module_.get().attr("buffers")()) buffers.push_back(b.cast<at::Tensor>());
    return buffers;
  }

 private:
  SharedPyObject module_;
};

}  // namespace

std::vector<at::Tensor> run_segment(const std::string& name, const py::function& fn,
                                    const std::vector<at::Tensor>& inputs,
                                    const py::object& module) {
  SharedPyObject callable(fn);
  SegmentFn segment_fn = [callable](const TensorList& args) -> TensorList {
    py::gil_scoped_acquire gil;
    try {
      return callable.get()(args).cast<TensorList>();
    } catch (py::error_already_set& e) {
      throw_python_error(e);
    }
  };
  std::shared_ptr<SegmentModule> segment_module;
  if (!module.is_none()) segment_module = std::make_shared<PySegmentModule>(module);
  return segment(name, segment_fn, inputs, std::move(segment_module));
}

}  // namespace actmem::python
