// actmem's saved-tensor hooks as the two Python callables PyTorch's default-hooks mechanism takes
// (torch.autograd.graph.saved_tensors_hooks(pack, unpack)): Python's autograd engine stays
// PyTorch's own, and calls these for every tensor saved where they are pushed.
//
// pack(tensor) asks the hooks actmem would give autograd on this thread now (hooks/engine.h's
// hooks_for_this_thread: the active scope's, a rerun's capture, or none) and returns a capsule
// that owns them; without a scope it holds the tensor (detached: a saved output must not hold its
// own grad_fn). unpack(capsule) returns the tensor, with the GIL released while actmem restores or
// recomputes it (a rerun takes the GIL back to run the segment's Python forward).
#pragma once

#include <Python.h>

namespace actmem::python {

// New builtin function objects (new references) for the two hooks; each call makes new ones.
PyObject* make_pack_function(PyObject* module);
PyObject* make_unpack_function(PyObject* module);

}  // namespace actmem::python
