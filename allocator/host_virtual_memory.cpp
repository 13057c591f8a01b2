#include "allocator/host_virtual_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "allocator/errors.h"

namespace actmem::alloc {
namespace {

[[noreturn]] void fail(const char* call, int error) {
  throw BackendError(std::string("actmem: vmm-host: ") + call + " failed: " +
                     std::strerror(error));
}

}  // namespace

HostVirtualMemory::HostVirtualMemory(std::size_t granularity, std::size_t reservation)
    : granularity_(granularity), reservation_(reservation / granularity * granularity) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (granularity == 0 || (granularity & (granularity - 1)) != 0 || granularity % page != 0) {
    throw std::invalid_argument("actmem: vmm-host: the granularity must be a power of two and a "
                                "multiple of the page size");
  }
}

void* HostVirtualMemory::reserve(std::size_t bytes) {
  // Over-reserve by one granule to align the start, then trim both ends.
  const std::size_t span = bytes + granularity_;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (start + granularity_ - 1) / granularity_ * granularity_;
  if (aligned > start) munmap(raw, aligned - start);
  const std::uintptr_t end = aligned + bytes;
  if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
  return reinterpret_cast<void*>(aligned);
}

void HostVirtualMemory::release(void* base, std::size_t bytes) {
  if (munmap(base, bytes) != 0) fail("munmap", errno);
}

bool HostVirtualMemory::map(void* ptr, std::size_t bytes) {
  if (mprotect(ptr, bytes, PROT_READ | PROT_WRITE) == 0) return true;
  if (errno == ENOMEM) return false;  // over the process's map count or commit limit
  fail("mprotect", errno);
}

void HostVirtualMemory::unmap(void* ptr, std::size_t bytes) {
  // The pages go back to the kernel (a later map gets zeroed ones), and touching them faults.
  if (madvise(ptr, bytes, MADV_DONTNEED) != 0) fail("madvise", errno);
  if (mprotect(ptr, bytes, PROT_NONE) != 0) fail("mprotect", errno);
}

}  // namespace actmem::alloc
