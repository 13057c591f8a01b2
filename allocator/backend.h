// Where the caching allocator gets its segments from.
//
// Shaped like RMM's memory resources: the public, non-virtual allocate/deallocate do the shared
// checks and call the private virtual do_allocate/do_deallocate, so a backend implements only how
// to get and return memory.
#pragma once

#include <cstddef>

namespace actmem::alloc {

class Backend {
 public:
  virtual ~Backend() = default;

  // Returns `bytes` (> 0) of memory aligned to at least kAlignment, or nullptr when the backend is
  // out of memory. Never throws for lack of memory: the caching allocator decides what to do.
  void* allocate(std::size_t bytes) { return bytes == 0 ? nullptr : do_allocate(bytes); }

  // Returns memory from allocate(bytes) with the same `bytes`.
  void deallocate(void* ptr, std::size_t bytes) {
    if (ptr != nullptr) do_deallocate(ptr, bytes);
  }

  // A short name for stats and messages: "host", "cuda".
  virtual const char* name() const noexcept = 0;

  static constexpr std::size_t kAlignment = 512;

 private:
  virtual void* do_allocate(std::size_t bytes) = 0;
  virtual void do_deallocate(void* ptr, std::size_t bytes) = 0;
};

}  // namespace actmem::alloc
