// The C ABI of libactmem_alloc.so (actmem_alloc.h) over the process-wide allocators.
#include "allocator/actmem_alloc.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>

#include "allocator/errors.h"
#include "allocator/process_allocators.h"

namespace {

using actmem::alloc::ProcessAllocators;

thread_local std::string t_last_error;

// Reads the configuration when the library loads, so a malformed variable stops the process at
// start rather than at the first allocation.
__attribute__((constructor)) void check_configuration_at_load() {
  try {
    ProcessAllocators::instance();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    std::_Exit(2);
  }
}

[[noreturn]] void die(const std::exception& error) {
  std::fprintf(stderr, "%s\n", error.what());
  std::abort();
}

// An error the program goes on from, told: printed and kept for actmem_last_error. A failed
// actmem_malloc, and a CUDA call that failed while memory was being released (the allocator kept
// the memory cached and is consistent); any other error aborts.
void report(const std::exception& error) {
  t_last_error = error.what();
  std::fprintf(stderr, "%s\n", error.what());
}

// What both malloc entry points serve; they differ in how a failure reaches the caller.
void* allocate(size_t size, int device, cudaStream_t stream) {
  if (size == 0) return nullptr;
  return ProcessAllocators::instance().for_device(device).allocate(size, stream);
}

}  // namespace

extern "C" {

void* actmem_malloc(size_t size, int device, cudaStream_t stream) {
  try {
    return allocate(size, device, stream);
  } catch (const std::exception& error) {
    report(error);
    return nullptr;
  }
}

void* actmem_torch_malloc(size_t size, int device, cudaStream_t stream) {
  try {
    return allocate(size, device, stream);
  } catch (const std::exception& error) {
    t_last_error = error.what();
    throw std::runtime_error(error.what());  // a type the caller's runtime knows
  }
}

void actmem_free(void* ptr, size_t /*size*/, int device, cudaStream_t /*stream*/) {
  if (ptr == nullptr) return;
  try {
    ProcessAllocators::instance().for_device(device).deallocate(ptr);
  } catch (const std::exception& error) {
    die(error);
  }
}

void actmem_record_stream(void* ptr, int device, cudaStream_t stream) {
  try {
    ProcessAllocators::instance().for_device(device).record_stream(ptr, stream);
  } catch (const std::exception& error) {
    die(error);
  }
}

const char* actmem_stats_json(void) {
  thread_local std::string json;
  try {
    json = ProcessAllocators::instance().stats_json();
  } catch (const std::exception& error) {
    die(error);
  }
  return json.c_str();
}

void actmem_empty_cache(void) {
  try {
    ProcessAllocators::instance().empty_cache();
  } catch (const actmem::alloc::BackendError& error) {
    report(error);
  } catch (const std::exception& error) {
    die(error);
  }
}

void actmem_set_budget(int device, size_t bytes) {
  try {
    ProcessAllocators::instance().for_device(device).set_budget(
        bytes == 0 ? std::nullopt : std::optional<std::size_t>(bytes));
  } catch (const actmem::alloc::BackendError& error) {
    report(error);
  } catch (const std::exception& error) {
    die(error);
  }
}

size_t actmem_get_budget(int device) {
  try {
    return ProcessAllocators::instance().for_device(device).budget().value_or(0);
  } catch (const std::exception& error) {
    die(error);
  }
}

const char* actmem_last_error(void) {
  return t_last_error.empty() ? nullptr : t_last_error.c_str();
}

}  // extern "C"
