// Where offloaded activations live: a host pool whose bytes are not device bytes.
//
// On the CPU build the pool is a caching allocator of its own over host memory, so its bytes are
// counted apart from the device allocator's. (The pinned pool with side-stream copies and
// prefetch is the GPU issue's.)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <optional>

#include "allocator/caching_allocator.h"

namespace actmem {

class HostStore {
 public:
  // `capacity`: the most bytes the pool may reserve; no limit when empty.
  explicit HostStore(std::optional<std::size_t> capacity = std::nullopt);

  // A host copy of `tensor` (same sizes and dtype; same strides when they are dense, contiguous
  // otherwise), or nullopt when the pool cannot grow. Its memory returns to the pool when the last
  // reference to it goes.
  std::optional<at::Tensor> offload(const at::Tensor& tensor);

  // A new device tensor with the data, sizes, strides and dtype of `host`.
  static at::Tensor restore(const at::Tensor& host);

  alloc::CachingAllocator& pool() { return pool_; }

 private:
  alloc::CachingAllocator pool_;
};

}  // namespace actmem
