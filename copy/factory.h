// The copy engine and host-pool backend for the device whose activations go out: CUDA's (a side
// stream, pinned memory) or the CPU build's (a worker thread, plain host memory).
#pragma once

#include <memory>

#include "allocator/backend.h"
#include "copy/copy_engine.h"

namespace actmem::copy {

// CudaCopyEngine on `device` when `cuda`, else InlineCopyEngine (see why there). Throws
// std::runtime_error when CUDA is asked of a build without the CUDA toolkit, or the engine cannot
// start.
std::unique_ptr<CopyEngine> make_copy_engine(bool cuda, int device);

// PinnedBackend when `cuda` (page-locked: copies overlap compute), else HostBackend.
std::unique_ptr<alloc::Backend> make_host_backend(bool cuda);

}  // namespace actmem::copy
