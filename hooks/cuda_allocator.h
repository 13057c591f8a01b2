// Internal: actmem's caching allocators as LibTorch's CUDA allocator.
//
// Through the C++ half of PyTorch's pluggable-allocator mechanism
// (torch::cuda::CUDAPluggableAllocator, what torch.cuda.memory.CUDAPluggableAllocator builds
// from Python): every CUDA tensor's bytes come from alloc::ProcessAllocators::for_device(device),
// on the stream LibTorch allocates on; Tensor::record_stream reaches the caching allocator's
// record_stream; torch's empty-cache call empties actmem's caches; torch.cuda's memory statistics
// (memory_allocated, max_memory_allocated, reset_peak_memory_stats, memory_stats) and cuDNN's
// cacheInfo read actmem's, where PyTorch's own pluggable allocator refuses them.
// Built from cuda_allocator.cpp when LibTorch has CUDA, else from cuda_allocator_none.cpp.
#pragma once

#include "allocator/caching_allocator.h"

namespace actmem::detail {

// Makes actmem's allocators LibTorch's CUDA allocator. Throws std::runtime_error when LibTorch's
// own CUDA allocator has already served an allocation (it cannot be swapped then), or when
// LibTorch was built without CUDA.
void install_cuda_allocator();

// The caching allocator of the current CUDA device.
alloc::CachingAllocator& current_cuda_memory();

}  // namespace actmem::detail
