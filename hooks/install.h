// Installing actmem into LibTorch.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>

#include "allocator/caching_allocator.h"

namespace actmem {

// Installs actmem's saved-tensor hooks (an autograd Engine subclass, through
// torch::autograd::set_default_engine_stub) and actmem's caching allocator as LibTorch's
// allocator for the device whose memory actmem manages (managed_device()):
// - the CUDA allocator when the process's allocators are CUDA-backed (ACTMEM_BACKEND=cuda, or auto
//   with a device present): every CUDA tensor's bytes are then in actmem's stats and under
//   ACTMEM_BUDGET, through the C++ half of PyTorch's pluggable-allocator mechanism. It must run
//   before the first CUDA allocation (LibTorch's CUDA allocator cannot be swapped once used).
// - the CPU allocator otherwise (the host backend: CPU tensors play device memory).
// c10's CPU allocator is never given a CUDA-backed allocator.
//
// Idempotent and thread-safe; call it before the first tensor autograd saves. Throws, leaving
// nothing installed, std::runtime_error inside a Python process (PyTorch's own engine must stay
// in charge) or when the CUDA allocator was already used, and alloc::ConfigError when an ACTMEM_*
// variable is malformed; a later call tries again.
void install();

// True once install() succeeded.
bool installed();

// The allocator half of install(), for a process whose autograd engine must stay PyTorch's own (a
// Python process: actmem's hooks then reach autograd through PyTorch's default saved-tensor hooks,
// python/): installs actmem's caching allocator for the managed device as install() does, and no
// engine. Idempotent and thread-safe; throws as install() does, except inside Python.
void install_allocator();

// The device whose memory actmem manages: kCUDA or kCPU. Installs what is missing first:
// install() outside Python, install_allocator() inside.
c10::DeviceType managed_device();

// The caching allocator of the managed device (the current CUDA device's, on CUDA). Installs what
// is missing first, as managed_device() does.
alloc::CachingAllocator& device_memory();
// The caching allocator of `device`, a device of the managed kind with an index on CUDA (else
// std::invalid_argument).
alloc::CachingAllocator& device_memory(c10::Device device);

}  // namespace actmem
