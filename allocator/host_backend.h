// Aligned host memory: the backend of the CPU build and of every test.
#pragma once

#include "allocator/backend.h"

namespace actmem::alloc {

class HostBackend final : public Backend {
 public:
  const char* name() const noexcept override { return "host"; }

 private:
  void* do_allocate(std::size_t bytes) override;
  void do_deallocate(void* ptr, std::size_t bytes) override;
};

}  // namespace actmem::alloc
