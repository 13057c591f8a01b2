// Carrying C++ exceptions across Python, both ways. The hooks run C++ code called from Python (a
// pack or unpack hook, a segment) that calls Python again (the segment's forward), so an error
// crosses the boundary twice and must come out as what it was.
#pragma once

#include <torch/csrc/utils/pybind.h>

namespace actmem::python {

// Registers the module's exception types and translators (alloc::ConfigError as ValueError, an
// out-of-memory error as torch.OutOfMemoryError). Called once, by the module's init.
void register_errors(pybind11::module_& module);

// Sets the Python error for the C++ exception being handled; only inside a catch block, with the
// GIL held. detail::StopRerun becomes actmem._C.StopRerun (a BaseException: a script's
// `except Exception` lets it through), which throw_python_error turns back into StopRerun.
void set_python_error();

// Throws the Python error that is set (or carried in `error`) as C++: StopRerun as
// detail::StopRerun, anything else as pybind11::error_already_set. GIL held.
[[noreturn]] void throw_python_error(pybind11::error_already_set& error);

}  // namespace actmem::python
