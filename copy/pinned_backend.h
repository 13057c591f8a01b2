// Page-locked host memory (cudaHostAlloc) as a caching-allocator backend: the host pool that
// offloaded activations live in on CUDA. The caching allocator above it hands out blocks carved
// from its segments, so the pool grows in slabs (2 MiB, 20 MiB, or a large request's own size),
// never a cudaHostAlloc (milliseconds) per tensor. Compiled only when the CUDA toolkit is found.
#pragma once

#include "allocator/backend.h"

namespace actmem::copy {

class PinnedBackend final : public alloc::Backend {
 public:
  const char* name() const noexcept override { return "pinned"; }

 private:
  void* do_allocate(std::size_t bytes) override;  // nullptr when the driver refuses
  void do_deallocate(void* ptr, std::size_t bytes) override;
};

}  // namespace actmem::copy
