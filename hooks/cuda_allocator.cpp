#include "hooks/cuda_allocator.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "allocator/process_allocators.h"

namespace actmem::detail {
namespace {

namespace pluggable = torch::cuda::CUDAPluggableAllocator;
using alloc::ProcessAllocators;

void* allocate(size_t bytes, int device, cudaStream_t stream) {
  // An OutOfMemoryError (actmem's, naming the budget and the bytes) reaches the caller as it is.
  return ProcessAllocators::instance().for_device(device).allocate(bytes, stream);
}

// Called by a tensor's deleter, where an exception would end the process without a word.
void deallocate(void* ptr, size_t /*bytes*/, int device, cudaStream_t /*stream*/) noexcept {
  try {
    ProcessAllocators::instance().for_device(device).deallocate(ptr);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "actmem: freeing a CUDA tensor's memory failed: %s\n", error.what());
    std::abort();
  }
}

// Tensor::record_stream gives the pointer and the stream, not the device: the allocator that
// handed the pointer out is the one that knows it.
void record_stream(void* ptr, cudaStream_t stream) {
  ProcessAllocators& process = ProcessAllocators::instance();
  for (int device = 0; device < ProcessAllocators::kMaxDevices; ++device) {
    alloc::CachingAllocator* allocator = process.existing(device);
    if (allocator != nullptr && allocator->owns(ptr)) {
      allocator->record_stream(ptr, stream);
      return;
    }
  }
  throw std::invalid_argument("actmem: record_stream on a CUDA pointer actmem did not allocate");
}

}  // namespace

void install_cuda_allocator() {
  std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator> created =
      pluggable::createCustomAllocator(&allocate, &deallocate);
  auto& custom = static_cast<pluggable::CUDAPluggableAllocator&>(*created);
  custom.set_record_stream_fn(&record_stream);
  custom.set_reset_fn([] { ProcessAllocators::instance().empty_cache(); });
  try {
    pluggable::changeCurrentAllocator(created);
  } catch (const c10::Error& error) {
    throw std::runtime_error(
        std::string("actmem: install() came after LibTorch's CUDA allocator served its first "
                    "allocation, and it cannot be replaced then; call actmem::install() before "
                    "creating any CUDA tensor (") +
        error.what_without_backtrace() + ")");
  }
}

alloc::CachingAllocator& current_cuda_memory() {
  return ProcessAllocators::instance().for_device(c10::cuda::current_device());
}

}  // namespace actmem::detail
