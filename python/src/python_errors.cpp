#include "python/src/python_errors.h"

#include <c10/util/Exception.h>
#include <torch/csrc/Exceptions.h>

#include <stdexcept>

#include "allocator/errors.h"
#include "hooks/segment_frame.h"

namespace py = pybind11;

namespace actmem::python {
namespace {

PyObject* g_stop_rerun = nullptr;        // actmem._C.StopRerun
PyObject* g_out_of_memory = nullptr;     // torch.OutOfMemoryError

}  // namespace

void register_errors(py::module_& module) {
  g_stop_rerun = PyErr_NewExceptionWithDoc(
      "actmem._C.StopRerun",
      "Internal: stops a segment's rerun once it produced what backward needs. Never caught by "
      "user code that catches Exception.",
      PyExc_BaseException, nullptr);
  module.add_object("StopRerun", py::handle(g_stop_rerun));
  g_out_of_memory = py::object(py::module_::import("torch").attr("OutOfMemoryError")).release().ptr();
  // For the functions pybind11 binds: actmem's own exceptions as set_python_error maps them;
  // any other goes on to pybind11's translators.
  py::register_exception_translator([](std::exception_ptr error) {
    if (!error) return;
    try {
      std::rethrow_exception(error);
    } catch (const detail::StopRerun&) {
      set_python_error();
    } catch (const alloc::OutOfMemoryError&) {
      set_python_error();
    } catch (const alloc::ConfigError&) {
      set_python_error();
    }
  });
}

void set_python_error() {
  try {
    throw;
  } catch (const detail::StopRerun&) {
    PyErr_SetNone(g_stop_rerun);
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (torch::PyTorchError& e) {
    PyErr_SetString(e.python_type(), e.what());
  } catch (python_error& e) {
    e.restore();
  } catch (const alloc::OutOfMemoryError& e) {
    PyErr_SetString(g_out_of_memory, e.what());
  } catch (const alloc::ConfigError& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const c10::OutOfMemoryError& e) {
    PyErr_SetString(g_out_of_memory, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "actmem: an unknown C++ exception");
  }
}

void throw_python_error(py::error_already_set& error) {
  if (error.matches(py::handle(g_stop_rerun))) throw detail::StopRerun{};
  throw std::move(error);
}

}  // namespace actmem::python
