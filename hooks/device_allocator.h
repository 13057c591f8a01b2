// actmem's caching allocator as c10's allocator: on the CPU build it is installed as the CPU
// allocator, so CPU tensors play the part of device memory and the allocator's stats are the
// "device bytes" every policy is measured by.
#pragma once

#include <c10/core/Allocator.h>

#include "allocator/caching_allocator.h"
#include "hooks/torch_compat.h"

namespace actmem {

class DeviceAllocator final : public c10::Allocator {
 public:
  explicit DeviceAllocator(alloc::CachingAllocator& allocator) : allocator_(allocator) {}

  c10::DataPtr allocate(size_t bytes) ACTMEM_ALLOCATE_CONST override;
  // Non-null: some kernels (mkldnn's) use raw_allocate/raw_deallocate.
  c10::DeleterFnPtr raw_deleter() const override;
#if ACTMEM_TORCH_AT_LEAST(2, 0)
  void copy_data(void* dest, const void* src, std::size_t count) const override;
#endif

  alloc::CachingAllocator& caching_allocator() const { return allocator_; }

 private:
  alloc::CachingAllocator& allocator_;
};

// The process's device allocator once install() ran, else nullptr.
DeviceAllocator* installed_device_allocator();

}  // namespace actmem
