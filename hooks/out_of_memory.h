// The out-of-memory errors a tensor allocation under actmem throws: LibTorch's own type.
//
// Code above LibTorch's allocators catches c10::OutOfMemoryError and nothing else: cuDNN halves
// its workspace and tries again, a convolution's algorithm search moves on to the next algorithm,
// a Python script's `except torch.OutOfMemoryError` (the type PyTorch turns
// c10::OutOfMemoryError into) shrinks its batch. actmem's allocator is torch-free and throws
// alloc::OutOfMemoryError; where its memory becomes a tensor's (the CPU and CUDA allocators
// install() puts in place), that error leaves as the OutOfMemoryError below, a
// c10::OutOfMemoryError with the same message and figures.
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "allocator/errors.h"

namespace actmem {

// A tensor's memory could not be found within the budget. what_without_backtrace() (and what():
// no backtrace) is the allocator's message (requested, allocated, reserved and cached bytes, the
// budget), or for BudgetTooSmallError the scope's.
class OutOfMemoryError : public c10::OutOfMemoryError {
 public:
  // `least_budget_bytes`: as alloc::OutOfMemoryError::least_budget_bytes, a lower bound of the
  // budget the work needs at this point; 0 when unknown (no budget was in force).
  OutOfMemoryError(std::string message, std::size_t requested_bytes,
                   std::size_t least_budget_bytes);
  explicit OutOfMemoryError(const alloc::OutOfMemoryError& cause);

  std::size_t requested_bytes() const noexcept { return requested_bytes_; }
  std::size_t least_budget_bytes() const noexcept { return least_budget_bytes_; }

 private:
  std::size_t requested_bytes_;
  std::size_t least_budget_bytes_;
};

// A training step does not fit the device budget even with every activation that can go out,
// out: thrown by the pressure handler of a scope whose policy evicts (auto) when nothing is left
// to evict. what() says how much stayed allocated and how much more the step needed: the least it
// needs at that point.
class BudgetTooSmallError : public OutOfMemoryError {
 public:
  using OutOfMemoryError::OutOfMemoryError;
};

namespace detail {

// How many out-of-memory errors left the allocators LibTorch calls on this thread so far (those
// actmem made and swallowed itself do not count): a rerun that caught one and went on another way
// (Note [A rerun that ran out of memory] in segment_frame.h) tells by the count.
std::uint64_t out_of_memory_errors_on_this_thread();
void count_out_of_memory_error();

// Returns allocate(); an alloc::OutOfMemoryError it throws leaves as actmem::OutOfMemoryError.
// For the allocators LibTorch calls; other exceptions pass unchanged.
template <class Allocate>
auto with_torch_out_of_memory(Allocate&& allocate) -> decltype(std::forward<Allocate>(allocate)()) {
  try {
    return std::forward<Allocate>(allocate)();
  } catch (const alloc::OutOfMemoryError& error) {
    count_out_of_memory_error();
    throw OutOfMemoryError(error);
  } catch (const c10::OutOfMemoryError&) {  // a pressure handler's BudgetTooSmallError
    count_out_of_memory_error();
    throw;
  }
}

}  // namespace detail
}  // namespace actmem
