// The errors the allocator reports. Each message names the problem and the numbers behind it.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace actmem::alloc {

// Base of every error the allocator throws.
class AllocatorError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A request could not be met: within the budget, after cached segments were released and the
// pressure handlers were asked. what() names requested, allocated, reserved, cached bytes and the
// largest free block.
class OutOfMemoryError : public AllocatorError {
 public:
  // `least_budget_bytes`: the smallest budget under which this request could have been met at
  // this point (what stayed reserved plus the segment it needed), a lower bound of what the work
  // needs; 0 when there was no budget (the backend itself ran out).
  OutOfMemoryError(const std::string& message, std::size_t requested_bytes,
                   std::size_t least_budget_bytes = 0)
      : AllocatorError(message),
        requested_bytes_(requested_bytes),
        least_budget_bytes_(least_budget_bytes) {}
  std::size_t requested_bytes() const noexcept { return requested_bytes_; }
  std::size_t least_budget_bytes() const noexcept { return least_budget_bytes_; }

 private:
  std::size_t requested_bytes_;
  std::size_t least_budget_bytes_;
};

// deallocate or record_stream got a pointer that is not a live allocation: never allocated, freed
// twice, or pointing inside a block.
class InvalidPointerError : public AllocatorError {
 public:
  using AllocatorError::AllocatorError;
};

// A call into the device (the CUDA runtime or driver, or the host twin of its virtual memory)
// failed for another reason than a lack of memory. The allocator stays consistent (Note [A failed
// CUDA call in the middle of a free]).
class BackendError : public AllocatorError {
 public:
  using AllocatorError::AllocatorError;
};

// An environment variable or ACTMEM_ALLOC_CONF entry is unknown or malformed.
class ConfigError : public AllocatorError {
 public:
  using AllocatorError::AllocatorError;
};

}  // namespace actmem::alloc
