#include "hooks/device_allocator.h"

#include <cstring>

namespace actmem {
c10::DataPtr DeviceAllocator::allocate(size_t bytes) ACTMEM_ALLOCATE_CONST {
  void* ptr = allocator_.allocate(bytes);
  // The context is the pointer itself; the deleter finds the allocator through the installed one.
  return {ptr, ptr, [](void* p) {
            if (p != nullptr) installed_device_allocator()->caching_allocator().deallocate(p);
          },
          c10::Device(c10::DeviceType::CPU)};
}

#if ACTMEM_TORCH_AT_LEAST(2, 0)
void DeviceAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  std::memcpy(dest, src, count);
}
#endif

}  // namespace actmem
