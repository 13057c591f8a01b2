// Address space reserved once and backed range by range: what lets a segment grow and shrink in
// place (the `vmm` layout, Note [Growable segments] in caching_allocator.cpp). On CUDA it is the
// driver's virtual memory management (cuMemAddressReserve, cuMemCreate/cuMemMap); on CPU an
// mmap(PROT_NONE) reservation committed and released page range by page range, so that the same
// allocator runs, and is tested, in every build.
//
// Contract: reserve() returns a range no one else uses, aligned to granularity(), with nothing
// backed; map() backs a granularity-aligned range inside it, or returns false when memory ran out
// (never throws for that); unmap() returns a mapped range's memory (touching it afterwards is an
// error), and leaves alone whatever in the range is not mapped: the caller has made sure that no
// work queued on the device still uses it; release() returns the whole range, unmapping what is
// still mapped, once any work on it has finished. Any other failure throws AllocatorError: map()
// then leaves none of the range mapped; unmap() may have unmapped part of it (the caching
// allocator then unmaps it granule by granule to know which).
// Not thread-safe: the caching allocator calls it under its lock.
#pragma once

#include <cstddef>

namespace actmem::alloc {

class VirtualMemory {
 public:
  virtual ~VirtualMemory() = default;

  // The unit of mapping, a power of two: 2 MiB on CUDA and on the CPU twin.
  virtual std::size_t granularity() const noexcept = 0;
  // How much address space one growable segment reserves: its most bytes (the device's memory on
  // CUDA).
  virtual std::size_t reservation() const noexcept = 0;
  // `bytes` (a multiple of granularity()) of address space, or nullptr when none is left.
  virtual void* reserve(std::size_t bytes) = 0;
  virtual void release(void* base, std::size_t bytes) = 0;
  virtual bool map(void* ptr, std::size_t bytes) = 0;
  virtual void unmap(void* ptr, std::size_t bytes) = 0;
  // A short name for stats and messages: "vmm" (CUDA), "vmm-host" (the CPU twin).
  virtual const char* name() const noexcept = 0;
};

}  // namespace actmem::alloc
