// Installing actmem into LibTorch.
#pragma once

#include "allocator/caching_allocator.h"

namespace actmem {

// Installs actmem's saved-tensor hooks (an autograd Engine subclass, through
// torch::autograd::set_default_engine_stub) and actmem's caching allocator as c10's CPU allocator
// (on the CPU build, CPU tensors play device memory). Idempotent and thread-safe; call it before
// the first tensor autograd saves. Throws std::runtime_error inside a Python process, where
// PyTorch's own engine must stay in charge.
void install();

// True once install() succeeded.
bool installed();

// The caching allocator behind c10's CPU allocator. Calls install() if needed.
alloc::CachingAllocator& device_memory();

}  // namespace actmem
