// actmem's caching allocator as c10's CPU allocator: where actmem manages the CPU (the host
// backend), CPU tensors play the part of device memory and the allocator's stats are the
// "device bytes" every policy is measured by. Never installed over a CUDA-backed allocator.
#pragma once

#include <c10/core/Allocator.h>

#include "allocator/caching_allocator.h"

namespace actmem {

class DeviceAllocator final : public c10::Allocator {
 public:
  explicit DeviceAllocator(alloc::CachingAllocator& allocator) : allocator_(allocator) {}

  c10::DataPtr allocate(size_t bytes) override;
  // Non-null: some kernels (mkldnn's) use raw_allocate/raw_deallocate.
  c10::DeleterFnPtr raw_deleter() const override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

  alloc::CachingAllocator& caching_allocator() const { return allocator_; }

 private:
  alloc::CachingAllocator& allocator_;
};

// The CPU adapter once install() put it in place (the managed device is the CPU), else nullptr.
DeviceAllocator* installed_device_allocator();

}  // namespace actmem
