#include <cstdio>
#include <memory>

#include "allocator/caching_allocator.h"
#include "allocator/host_backend.h"

int main() {
  actmem::alloc::CachingAllocator allocator(std::make_unique<actmem::alloc::HostBackend>());
  void* p = allocator.allocate(1000);
  allocator.deallocate(p);
  std::printf("downstream ok: %lld bytes reserved\n",
              static_cast<long long>(allocator.stats().reserved_bytes.current));
  return p != nullptr ? 0 : 1;
}
