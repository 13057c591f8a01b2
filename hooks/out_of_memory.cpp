#include "hooks/out_of_memory.h"

namespace actmem {
namespace {

thread_local std::uint64_t t_out_of_memory_errors = 0;

}  // namespace

std::uint64_t detail::out_of_memory_errors_on_this_thread() { return t_out_of_memory_errors; }

void detail::count_out_of_memory_error() { ++t_out_of_memory_errors; }

// No backtrace: what() is the message alone, as what_without_backtrace() is; the message already
// names everything a reader needs (and c10 would otherwise walk the stack at every refusal, which
// a max-batch search makes by the hundred).
OutOfMemoryError::OutOfMemoryError(std::string message, std::size_t requested_bytes,
                                   std::size_t least_budget_bytes)
    : c10::OutOfMemoryError(std::move(message)),
      requested_bytes_(requested_bytes),
      least_budget_bytes_(least_budget_bytes) {}

OutOfMemoryError::OutOfMemoryError(const alloc::OutOfMemoryError& cause)
    : OutOfMemoryError(cause.what(), cause.requested_bytes(), cause.least_budget_bytes()) {}

}  // namespace actmem
