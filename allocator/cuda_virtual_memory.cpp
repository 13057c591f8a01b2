#include "allocator/cuda_virtual_memory.h"

#include <cuda.h>
#include <dlfcn.h>

#include <type_traits>

#include <stdexcept>

#include "allocator/errors.h"

namespace actmem::alloc {

struct CudaVirtualMemory::Driver {
  CUresult (*get_error_string)(CUresult, const char**);
  CUresult (*device_get)(CUdevice*, int);
  CUresult (*device_get_attribute)(int*, CUdevice_attribute, CUdevice);
  CUresult (*device_total_mem)(size_t*, CUdevice);
  CUresult (*granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags);
  CUresult (*address_reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
  CUresult (*address_free)(CUdeviceptr, size_t);
  CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                     unsigned long long);
  CUresult (*release)(CUmemGenericAllocationHandle);
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*unmap)(CUdeviceptr, size_t);
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);
  CUresult (*synchronize)();
  CUresult (*primary_context_retain)(CUcontext*, CUdevice);
  CUresult (*primary_context_release)(CUdevice);
  CUresult (*push_context)(CUcontext);
  CUresult (*pop_context)(CUcontext*);

  // The driver's functions, or nullptr with `why` set.
  static const Driver* open(std::string* why) {
    static std::string failure;
    static const Driver* driver = [] () -> const Driver* {
      void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (library == nullptr) {
        failure = "the CUDA driver (libcuda.so.1) could not be opened";
        return nullptr;
      }
      auto* d = new Driver{};
      bool complete = true;
      auto find = [&](auto& slot, const char* symbol) {
        slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, symbol));
        if (slot == nullptr) {
          complete = false;
          failure = std::string("the CUDA driver lacks ") + symbol;
        }
      };
      find(d->get_error_string, "cuGetErrorString");
      find(d->device_get, "cuDeviceGet");
      find(d->device_get_attribute, "cuDeviceGetAttribute");
      find(d->device_total_mem, "cuDeviceTotalMem_v2");
      find(d->granularity, "cuMemGetAllocationGranularity");
      find(d->address_reserve, "cuMemAddressReserve");
      find(d->address_free, "cuMemAddressFree");
      find(d->create, "cuMemCreate");
      find(d->release, "cuMemRelease");
      find(d->map, "cuMemMap");
      find(d->unmap, "cuMemUnmap");
      find(d->set_access, "cuMemSetAccess");
      find(d->synchronize, "cuCtxSynchronize");
      find(d->primary_context_retain, "cuDevicePrimaryCtxRetain");
      // Drivers before CUDA 11 name it without _v2.
      find(d->primary_context_release, dlsym(library, "cuDevicePrimaryCtxRelease_v2") != nullptr
                                           ? "cuDevicePrimaryCtxRelease_v2"
                                           : "cuDevicePrimaryCtxRelease");
      find(d->push_context, "cuCtxPushCurrent_v2");
      find(d->pop_context, "cuCtxPopCurrent_v2");
      if (!complete) {
        delete d;
        return nullptr;
      }
      return d;  // lives as long as the process, as the driver does
    }();
    if (driver == nullptr && why != nullptr) *why = failure;
    return driver;
  }

  [[noreturn]] void fail(const char* call, CUresult result) const {
    const char* text = nullptr;
    get_error_string(result, &text);
    throw BackendError(std::string("actmem: vmm: ") + call + " failed: " +
                       (text != nullptr ? text : "unknown CUDA driver error"));
  }
};

namespace {

// Makes `context` the calling thread's current one until the end of the scope: cuCtxSynchronize
// waits for the current context's work, which is another device's when the caller's current
// device is not this memory's.
class CurrentContext {
 public:
  CurrentContext(const CudaVirtualMemory::Driver& driver, CUcontext context) : driver_(driver) {
    const CUresult pushed = driver_.push_context(context);
    if (pushed != CUDA_SUCCESS) driver_.fail("cuCtxPushCurrent", pushed);
  }
  ~CurrentContext() {
    CUcontext popped = nullptr;
    driver_.pop_context(&popped);
  }
  CurrentContext(const CurrentContext&) = delete;
  CurrentContext& operator=(const CurrentContext&) = delete;

 private:
  const CudaVirtualMemory::Driver& driver_;
};

CUmemAllocationProp device_memory(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

}  // namespace

std::unique_ptr<CudaVirtualMemory> CudaVirtualMemory::create(int device, std::string* why) {
  const Driver* driver = Driver::open(why);
  if (driver == nullptr) return nullptr;
  CUdevice handle = 0;
  int supported = 0;
  if (driver->device_get(&handle, device) != CUDA_SUCCESS ||
      driver->device_get_attribute(
          &supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, handle) !=
          CUDA_SUCCESS ||
      supported == 0) {
    if (why != nullptr) *why = "CUDA device " + std::to_string(device) +
                               " does not support virtual memory management";
    return nullptr;
  }
  const CUmemAllocationProp prop = device_memory(device);
  std::size_t granularity = 0;
  std::size_t total = 0;
  if (driver->granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) !=
          CUDA_SUCCESS ||
      granularity == 0 || driver->device_total_mem(&total, handle) != CUDA_SUCCESS) {
    if (why != nullptr) *why = "the CUDA driver gave no allocation granularity or memory size";
    return nullptr;
  }
  const std::size_t reservation = (total + granularity - 1) / granularity * granularity;
  CUcontext context = nullptr;  // the device's primary context: the CUDA runtime's
  if (const CUresult retained = driver->primary_context_retain(&context, handle);
      retained != CUDA_SUCCESS) {
    const char* text = nullptr;
    driver->get_error_string(retained, &text);
    if (why != nullptr) {
      *why = "CUDA device " + std::to_string(device) + "'s context could not be retained: " +
             (text != nullptr ? text : "unknown CUDA driver error");
    }
    return nullptr;
  }
  return std::unique_ptr<CudaVirtualMemory>(
      new CudaVirtualMemory(*driver, device, handle, context, granularity, reservation));
}

CudaVirtualMemory::CudaVirtualMemory(const Driver& driver, int device, int device_handle,
                                     CUctx_st* context, std::size_t granularity,
                                     std::size_t reservation)
    : driver_(driver),
      device_(device),
      device_handle_(device_handle),
      context_(context),
      granularity_(granularity),
      reservation_(reservation) {}

CudaVirtualMemory::~CudaVirtualMemory() {
  for (const auto& [address, handle] : handles_) {
    driver_.unmap(static_cast<CUdeviceptr>(address), granularity_);
    driver_.release(handle);
  }
  driver_.primary_context_release(device_handle_);
}

void* CudaVirtualMemory::reserve(std::size_t bytes) {
  CUdeviceptr base = 0;
  if (driver_.address_reserve(&base, bytes, granularity_, 0, 0) != CUDA_SUCCESS) return nullptr;
  return reinterpret_cast<void*>(base);
}

void CudaVirtualMemory::release(void* base, std::size_t bytes) {
  const auto start = reinterpret_cast<std::uintptr_t>(base);
  if (handles_.lower_bound(start) != handles_.lower_bound(start + bytes)) {
    // A whole reservation goes back at teardown, whatever streams used it: like cudaFree, wait
    // for the device, this memory's (not the thread's current one).
    {
      const CurrentContext current(driver_, context_);
      const CUresult synced = driver_.synchronize();
      if (synced != CUDA_SUCCESS) driver_.fail("cuCtxSynchronize", synced);
    }
    unmap(base, bytes);
  }
  const CUresult result = driver_.address_free(static_cast<CUdeviceptr>(start), bytes);
  if (result != CUDA_SUCCESS) driver_.fail("cuMemAddressFree", result);
}

bool CudaVirtualMemory::map(void* ptr, std::size_t bytes) {
  const CUmemAllocationProp prop = device_memory(device_);
  const auto start = reinterpret_cast<std::uintptr_t>(ptr);
  std::size_t done = 0;
  for (; done < bytes; done += granularity_) {
    // Still mapped: a roll_back() that could not unmap it. Its memory serves again.
    if (handles_.count(start + done) > 0) continue;
    CUmemGenericAllocationHandle handle = 0;
    const CUresult created = driver_.create(&handle, granularity_, &prop, 0);
    if (created == CUDA_ERROR_OUT_OF_MEMORY) break;
    if (created != CUDA_SUCCESS) {
      roll_back(start, done);
      driver_.fail("cuMemCreate", created);
    }
    const CUresult mapped =
        driver_.map(static_cast<CUdeviceptr>(start + done), granularity_, 0, handle, 0);
    if (mapped != CUDA_SUCCESS) {
      driver_.release(handle);
      roll_back(start, done);  // nothing stays mapped that the caller believes is not
      driver_.fail("cuMemMap", mapped);
    }
    handles_[start + done] = handle;
  }
  if (done < bytes) {  // out of device memory: give back what this call mapped
    roll_back(start, done);
    return false;
  }
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  const CUresult result = driver_.set_access(static_cast<CUdeviceptr>(start), bytes, &access, 1);
  if (result != CUDA_SUCCESS) {
    roll_back(start, bytes);  // nothing stays mapped that the caller believes is not
    driver_.fail("cuMemSetAccess", result);
  }
  return true;
}

void CudaVirtualMemory::roll_back(std::uintptr_t start, std::size_t bytes) noexcept {
  for (std::uintptr_t at = start; at < start + bytes; at += granularity_) {
    const auto found = handles_.find(at);
    if (found == handles_.end()) continue;
    if (driver_.unmap(static_cast<CUdeviceptr>(at), granularity_) != CUDA_SUCCESS) continue;
    driver_.release(found->second);
    handles_.erase(found);
  }
}

void CudaVirtualMemory::unmap(void* ptr, std::size_t bytes) {
  const auto start = reinterpret_cast<std::uintptr_t>(ptr);
  for (std::uintptr_t at = start; at < start + bytes; at += granularity_) {
    const auto found = handles_.find(at);
    if (found == handles_.end()) continue;
    const CUresult unmapped = driver_.unmap(static_cast<CUdeviceptr>(at), granularity_);
    if (unmapped != CUDA_SUCCESS) driver_.fail("cuMemUnmap", unmapped);
    driver_.release(found->second);
    handles_.erase(found);
  }
}

}  // namespace actmem::alloc
