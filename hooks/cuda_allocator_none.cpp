// hooks/cuda_allocator.h for a LibTorch built without CUDA.
#include <stdexcept>

#include "hooks/cuda_allocator.h"

namespace actmem::detail {

void install_cuda_allocator() {
  throw std::runtime_error(
      "actmem: the allocator's backend is cuda, but this LibTorch was built without CUDA; set "
      "ACTMEM_BACKEND=host, or build actmem against a CUDA LibTorch");
}

alloc::CachingAllocator& current_cuda_memory() {
  throw std::logic_error("actmem: no CUDA device is managed by this LibTorch (built without CUDA)");
}

}  // namespace actmem::detail
