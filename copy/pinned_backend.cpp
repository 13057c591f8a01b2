#include "copy/pinned_backend.h"

#include <cuda_runtime_api.h>

#include <string>

#include "allocator/errors.h"

namespace actmem::copy {

void* PinnedBackend::do_allocate(std::size_t bytes) {
  void* ptr = nullptr;
  if (cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();  // clear it: the caching allocator reports the shortage itself
    return nullptr;
  }
  return ptr;
}

// A failure throws, so that the caching allocator keeps the block cached (Note [A failed CUDA
// call in the middle of a free]) rather than count pinned memory as returned that was not.
void PinnedBackend::do_deallocate(void* ptr, std::size_t /*bytes*/) {
  const cudaError_t error = cudaFreeHost(ptr);
  if (error != cudaSuccess) {
    cudaGetLastError();
    throw alloc::BackendError(std::string("actmem: cudaFreeHost failed: ") +
                              cudaGetErrorString(error));
  }
}

}  // namespace actmem::copy
