#include "allocator/host_backend.h"

#include <cstdlib>

namespace actmem::alloc {

void* HostBackend::do_allocate(std::size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; the caching core asks for such sizes anyway.
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, rounded);
}

void HostBackend::do_deallocate(void* ptr, std::size_t /*bytes*/) { std::free(ptr); }

}  // namespace actmem::alloc
