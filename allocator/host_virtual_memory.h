// VirtualMemory over the CPU's own: mmap(PROT_NONE, MAP_NORESERVE) reserves, mprotect commits, and
// madvise(MADV_DONTNEED) plus mprotect(PROT_NONE) give pages back to the kernel. The CPU twin of
// the CUDA driver's virtual memory, with the same 2 MiB granularity by default, so that a layout
// measured here reserves what it would on the GPU.
#pragma once

#include "allocator/virtual_memory.h"

namespace actmem::alloc {

class HostVirtualMemory final : public VirtualMemory {
 public:
  // `granularity`: a power of two, a multiple of the page size. `reservation`: address space only
  // (MAP_NORESERVE), nothing is committed until mapped.
  explicit HostVirtualMemory(std::size_t granularity = std::size_t{2} << 20,
                             std::size_t reservation = std::size_t{64} << 30);

  std::size_t granularity() const noexcept override { return granularity_; }
  std::size_t reservation() const noexcept override { return reservation_; }
  void* reserve(std::size_t bytes) override;
  void release(void* base, std::size_t bytes) override;
  bool map(void* ptr, std::size_t bytes) override;
  void unmap(void* ptr, std::size_t bytes) override;
  const char* name() const noexcept override { return "vmm-host"; }

 private:
  std::size_t granularity_;
  std::size_t reservation_;
};

}  // namespace actmem::alloc
