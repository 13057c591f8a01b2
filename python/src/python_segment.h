// actmem::segment (hooks/segment.h) for a Python nn.Module: the segment's function is a Python
// callable, and the module whose training flags and buffers a rerun restores is a Python one.
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <string>
#include <vector>

namespace actmem::python {

// segment(name, fn, inputs, module): runs fn(inputs) -> list of tensors as a segment of the
// active scope (just runs it outside one, or inside a rerun). `module` is an nn.Module or None.
// fn may be run again in backward, on autograd's thread, holding the GIL then.
std::vector<at::Tensor> run_segment(const std::string& name, const pybind11::function& fn,
                                    const std::vector<at::Tensor>& inputs,
                                    const pybind11::object& module);

}  // namespace actmem::python
