// VirtualMemory over the CUDA driver's virtual memory management: cuMemAddressReserve reserves,
// cuMemCreate + cuMemMap + cuMemSetAccess back one granule at a time (each its own physical
// allocation, so that any granule can be unmapped alone), cuMemUnmap + cuMemRelease give it back.
// The driver (libcuda.so.1) is opened at run time, not linked: the allocator's libraries load
// where there is none. Compiled only with the CUDA toolkit (ACTMEM_HAVE_CUDA).
//
// unmap() does not wait: unmapping, unlike cudaFree, does not synchronise, and a block freed on a
// stream may still be read by kernels queued before its free. The caching allocator waits for
// that stream first (Note [Unmapping waits for the stream]). release(), at teardown, waits for
// the whole device: its own, whichever device is current on the calling thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "allocator/virtual_memory.h"

struct CUctx_st;  // CUcontext, without the driver's header

namespace actmem::alloc {

class CudaVirtualMemory final : public VirtualMemory {
 public:
  // The driver's virtual memory on `device`, or nullptr with `why` set when the driver cannot be
  // opened, lacks a function, or the device does not support virtual memory management.
  static std::unique_ptr<CudaVirtualMemory> create(int device, std::string* why);
  ~CudaVirtualMemory() override;

  std::size_t granularity() const noexcept override { return granularity_; }
  std::size_t reservation() const noexcept override { return reservation_; }
  void* reserve(std::size_t bytes) override;
  void release(void* base, std::size_t bytes) override;
  bool map(void* ptr, std::size_t bytes) override;
  void unmap(void* ptr, std::size_t bytes) override;
  const char* name() const noexcept override { return "vmm"; }

  struct Driver;  // the driver functions, resolved once

 private:
  CudaVirtualMemory(const Driver& driver, int device, int device_handle, CUctx_st* context,
                    std::size_t granularity, std::size_t reservation);
  // Undoes a map() that fails: unmaps the granules [start, start + bytes) it mapped. Nothing ran
  // on them, so no synchronisation; best effort and silent, since the caller is already failing
  // with the error that matters (a granule that will not unmap stays in handles_: a later map()
  // uses it again, release() unmaps it).
  void roll_back(std::uintptr_t start, std::size_t bytes) noexcept;

  const Driver& driver_;
  int device_;
  int device_handle_;  // CUdevice
  CUctx_st* context_;  // the device's primary context (CUcontext), retained while this lives
  std::size_t granularity_;
  std::size_t reservation_;
  std::map<std::uintptr_t, unsigned long long> handles_;  // granule address -> its allocation
};

}  // namespace actmem::alloc
