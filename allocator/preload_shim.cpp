// libactmem_preload.so: serves a program's cudaMalloc/cudaFree from actmem's caching allocator.
//
//   LD_PRELOAD=libactmem_preload.so ACTMEM_BUDGET=6GiB python train.py
//
// Interposes cudaMalloc, cudaFree, cudaMallocAsync, cudaFreeAsync and cudaMemGetInfo on programs
// that link libcudart dynamically (PyTorch's wheels do; with PYTORCH_NO_CUDA_MEMORY_CACHING=1
// every tensor then comes through here). Segments come from the real functions, found with
// dlsym(RTLD_NEXT, ...).
//
// Contracts:
// - Never recurses: a call made while this thread is already inside the shim goes straight to the
//   real function.
// - A pointer the shim did not hand out is passed to the real cudaFree; one that lies inside
//   memory the shim reserved but is not a live allocation (a double free, an interior pointer) is
//   refused with cudaErrorInvalidValue and a message on stderr, never passed on.
// - cudaFree keeps CUDA's contract that it synchronizes the device before memory is reused;
//   cudaFreeAsync is stream-ordered: the block is reused on another stream only after the work
//   queued on the freeing stream completes.
// - With no CUDA device (or ACTMEM_BACKEND=host) everything passes through untouched.
// - The real functions are found in the libraries loaded after the shim, or, when the program
//   loaded libcudart RTLD_LOCAL (dlopen of a library that links it), in that libcudart itself.
//   When the runtime lacks a function the shim needs, everything passes through, and the shim
//   says so once on stderr, naming what is missing and the ACTMEM_BUDGET that is not in force.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "allocator/caching_allocator.h"
#include "allocator/cuda_current_device.h"
#include "allocator/cuda_runtime.h"
#include "allocator/errors.h"
#include "allocator/export.h"
#include "allocator/process_allocators.h"

namespace actmem::alloc {
namespace {

struct RealCuda {
  CudaRuntime runtime{};
  // Not needed to manage memory (CUDA < 11.2 lacks them): nullptr where absent.
  cudaError_t (*malloc_async)(void** ptr, size_t size, cudaStream_t stream) = nullptr;
  cudaError_t (*free_async)(void* ptr, cudaStream_t stream) = nullptr;
  bool ok = false;
};

// A handle on a libcudart already loaded, whatever its scope (RTLD_LOCAL included), or nullptr.
void* loaded_cuda_runtime() {
  std::string path;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const char* slash = std::strrchr(info->dlpi_name, '/');
        const char* base = slash != nullptr ? slash + 1 : info->dlpi_name;
        if (std::strncmp(base, "libcudart", 9) != 0) return 0;
        *static_cast<std::string*>(data) = info->dlpi_name;
        return 1;
      },
      &path);
  return path.empty() ? nullptr : dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
}

// Looks each function up in one place (`where`: RTLD_NEXT, or a handle on a libcudart); the names
// of those it lacks are added to `missing`.
class SymbolFinder {
 public:
  explicit SymbolFinder(void* where) : where_(where) {}
  template <typename Fn>
  void find(Fn*& fn, const char* name) {
    find_optional(fn, name);
    if (fn == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(name);
  }
  template <typename Fn>
  void find_optional(Fn*& fn, const char* name) {
    fn = reinterpret_cast<Fn*>(where_ != nullptr ? dlsym(where_, name) : nullptr);
  }
  std::string missing;

 private:
  void* where_;
};

// Every function the shim needs from one runtime: `missing` names those it lacks.
RealCuda resolve_from(void* where, std::string& missing) {
  RealCuda r;
  CudaRuntime& rt = r.runtime;
  SymbolFinder finder(where);
  finder.find(rt.malloc, "cudaMalloc");
  finder.find(rt.free, "cudaFree");
  finder.find(rt.mem_get_info, "cudaMemGetInfo");
  finder.find(rt.get_device, "cudaGetDevice");
  finder.find(rt.set_device, "cudaSetDevice");
  finder.find(rt.get_device_count, "cudaGetDeviceCount");
  finder.find(rt.event_create_with_flags, "cudaEventCreateWithFlags");
  finder.find(rt.event_record, "cudaEventRecord");
  finder.find(rt.event_query, "cudaEventQuery");
  finder.find(rt.event_destroy, "cudaEventDestroy");
  finder.find(rt.stream_synchronize, "cudaStreamSynchronize");
  finder.find(rt.device_synchronize, "cudaDeviceSynchronize");
  finder.find(rt.get_last_error, "cudaGetLastError");
  finder.find(rt.get_error_string, "cudaGetErrorString");
  finder.find_optional(r.malloc_async, "cudaMallocAsync");
  finder.find_optional(r.free_async, "cudaFreeAsync");
  r.ok = finder.missing.empty();
  missing = finder.missing;
  return r;
}

// Says once, on stderr, that the shim passes everything through, and what that costs the user.
void warn_passing_through(const std::string& missing) {
  const char* budget = std::getenv("ACTMEM_BUDGET");
  std::fprintf(stderr,
               "actmem: libactmem_preload.so is not managing CUDA memory: the CUDA runtime "
               "beneath it lacks %s. Every call goes to the runtime unchanged%s%s%s.\n",
               missing.c_str(), budget != nullptr ? "; ACTMEM_BUDGET=" : "",
               budget != nullptr ? budget : "", budget != nullptr ? " is not in force" : "");
}

const RealCuda& real_cuda() {
  static const RealCuda real = [] {
    // The runtime after the shim in the global scope; else, all of it from a libcudart the
    // program loaded RTLD_LOCAL (never half from one runtime and half from another).
    std::string missing;
    RealCuda r = resolve_from(RTLD_NEXT, missing);
    if (!r.ok) {
      if (void* local = loaded_cuda_runtime()) {
        std::string missing_locally;
        RealCuda from_local = resolve_from(local, missing_locally);
        if (from_local.ok || r.runtime.malloc == nullptr) {
          r = from_local;
          missing = missing_locally;
        }
      }
    }
    if (!r.ok) warn_passing_through(missing);
    return r;
  }();
  return real;
}

thread_local int t_depth = 0;  // > 0 while this thread is inside the shim

// The pool key of blocks from synchronous cudaMalloc: kUnorderedPool, since cudaFree waits for
// the device. Not the null stream: a block that cudaMallocAsync(..., 0) got and
// cudaFreeAsync(..., 0) returned is still in use by queued work, and must not come back from a
// cudaMalloc at once.
const Stream kSynchronousPool = kUnorderedPool;

class ShimScope {
 public:
  ShimScope() { ++t_depth; }
  ~ShimScope() { --t_depth; }
  static bool nested() { return t_depth > 0; }
};

// The allocators, or nullptr when the shim passes everything through.
ProcessAllocators* managed() {
  if (!real_cuda().ok) return nullptr;
  ProcessAllocators& allocators = ProcessAllocators::instance();
  return allocators.backend_kind() == BackendKind::kCuda ? &allocators : nullptr;
}

// The calling thread's device in *device; the runtime's error, said on stderr, when it cannot say.
cudaError_t current_device(int* device) {
  const cudaError_t status = real_cuda().runtime.get_device(device);
  if (status != cudaSuccess) {
    std::fprintf(stderr, "actmem: cudaGetDevice failed: %s\n",
                 real_cuda().runtime.get_error_string(status));
  }
  return status;
}

// The first device's allocator for which `test(allocator)` holds, or nullptr; `*device` is its
// device.
template <typename Test>
CachingAllocator* find_allocator(ProcessAllocators& allocators, Test test, int* device = nullptr) {
  for (int index = 0; index < ProcessAllocators::kMaxDevices; ++index) {
    CachingAllocator* allocator = allocators.existing(index);
    if (allocator != nullptr && test(*allocator)) {
      if (device != nullptr) *device = index;
      return allocator;
    }
  }
  return nullptr;
}

// Waits for `device`'s queued work, whichever device is current (cudaFree's contract is to wait
// for the device that owns the memory; a program may free a tensor of device 1 while device 0 is
// current), and makes the current device current again.
cudaError_t synchronize_device(int device) {
  const CudaRuntime& runtime = real_cuda().runtime;
  const CurrentDevice current(runtime, device);
  if (current.status() != cudaSuccess) return current.status();
  return runtime.device_synchronize();
}

cudaError_t shim_malloc(void** ptr, size_t size, cudaStream_t stream) {
  ProcessAllocators* allocators = managed();
  if (allocators == nullptr) return cudaErrorInitializationError;
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  int device = 0;
  if (const cudaError_t status = current_device(&device); status != cudaSuccess) return status;
  try {
    *ptr = allocators->for_device(device).allocate(size, stream);
    return cudaSuccess;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return cudaErrorMemoryAllocation;
  }
}

// Returns `ptr` to its allocator; cudaErrorNotSupported when the shim does not own it.
cudaError_t shim_free(void* ptr, cudaStream_t stream, bool stream_ordered) {
  ProcessAllocators* allocators = managed();
  if (allocators == nullptr || ptr == nullptr) return cudaErrorNotSupported;
  int device = 0;
  CachingAllocator* owner =
      find_allocator(*allocators, [ptr](CachingAllocator& a) { return a.owns(ptr); }, &device);
  if (owner == nullptr) {
    const bool inside = find_allocator(*allocators, [ptr](CachingAllocator& a) {
                          return a.in_reserved_memory(ptr);
                        }) != nullptr;
    if (!inside) return cudaErrorNotSupported;
    std::fprintf(stderr,
                 "actmem: cudaFree(%p): not a live allocation, though it lies in memory actmem "
                 "reserved: a double free, or a pointer into the middle of a block\n",
                 ptr);
    return cudaErrorInvalidValue;
  }
  try {
    if (stream_ordered) {
      owner->record_stream(ptr, stream);
    } else if (const cudaError_t synced = synchronize_device(device); synced != cudaSuccess) {
      // cudaFree's own contract is to wait for the device; when that fails, the memory may still
      // be in use, so it stays allocated and the caller gets the error, as from cudaFree.
      std::fprintf(stderr, "actmem: cudaFree(%p): cudaDeviceSynchronize failed: %s; not freed\n",
                   ptr, real_cuda().runtime.get_error_string(synced));
      return synced;
    }
    owner->deallocate(ptr);
    return cudaSuccess;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return cudaErrorInvalidValue;
  }
}

}  // namespace

namespace detail {
const CudaRuntime* resolve_cuda_runtime() {
  return real_cuda().ok ? &real_cuda().runtime : nullptr;
}
}  // namespace detail

namespace {
// A malformed ACTMEM_* variable stops the program at start, with the variable named.
__attribute__((constructor)) void check_configuration_at_load() {
  try {
    ProcessAllocators::instance();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    std::_Exit(2);
  }
}
}  // namespace

}  // namespace actmem::alloc

using actmem::alloc::real_cuda;
using actmem::alloc::ShimScope;

extern "C" {

ACTMEM_EXPORT cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ShimScope::nested()) return real_cuda().runtime.malloc(ptr, size);
  ShimScope scope;
  const cudaError_t status = actmem::alloc::shim_malloc(
      ptr, size, static_cast<cudaStream_t>(actmem::alloc::kSynchronousPool));
  if (status == cudaErrorInitializationError && real_cuda().runtime.malloc != nullptr) {
    return real_cuda().runtime.malloc(ptr, size);
  }
  return status;
}

ACTMEM_EXPORT cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t stream) {
  const auto real = real_cuda().malloc_async;
  if (ShimScope::nested()) return real ? real(ptr, size, stream) : cudaErrorNotSupported;
  ShimScope scope;
  const cudaError_t status = actmem::alloc::shim_malloc(ptr, size, stream);
  if (status == cudaErrorInitializationError) {
    return real ? real(ptr, size, stream) : cudaErrorNotSupported;
  }
  return status;
}

ACTMEM_EXPORT cudaError_t cudaFree(void* ptr) {
  if (ShimScope::nested()) return real_cuda().runtime.free(ptr);
  ShimScope scope;
  const cudaError_t status = actmem::alloc::shim_free(ptr, nullptr, /*stream_ordered=*/false);
  if (status == cudaErrorNotSupported) {
    return real_cuda().runtime.free ? real_cuda().runtime.free(ptr) : cudaErrorInitializationError;
  }
  return status;
}

ACTMEM_EXPORT cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  const auto real = real_cuda().free_async;
  if (ShimScope::nested()) return real ? real(ptr, stream) : cudaErrorNotSupported;
  ShimScope scope;
  const cudaError_t status = actmem::alloc::shim_free(ptr, stream, /*stream_ordered=*/true);
  if (status == cudaErrorNotSupported) return real ? real(ptr, stream) : cudaErrorNotSupported;
  return status;
}

// Free and total memory as a program sees it within ACTMEM_BUDGET: total is the budget (when it is
// below the device's memory); free is what the program could still allocate, counting memory the
// cache holds but no allocation uses.
ACTMEM_EXPORT cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  const auto& real = real_cuda().runtime;
  if (real.mem_get_info == nullptr) return cudaErrorInitializationError;
  const cudaError_t status = real.mem_get_info(free, total);
  if (status != cudaSuccess || ShimScope::nested() || free == nullptr || total == nullptr) {
    return status;
  }
  ShimScope scope;
  actmem::alloc::ProcessAllocators* allocators = actmem::alloc::managed();
  if (allocators == nullptr) return status;
  int device = 0;
  if (const cudaError_t failed = actmem::alloc::current_device(&device); failed != cudaSuccess) {
    return failed;
  }
  actmem::alloc::CachingAllocator* allocator = allocators->existing(device);
  const auto stats = allocator != nullptr ? allocator->stats() : actmem::alloc::AllocatorStats{};
  const size_t cached =
      static_cast<size_t>(stats.reserved_bytes.current - stats.allocated_bytes.current);
  size_t new_free = *free + cached;
  size_t new_total = *total;
  const size_t budget = allocator != nullptr ? allocator->budget().value_or(0)
                                             : allocators->config().allocator.budget_bytes.value_or(0);
  if (budget != 0 && budget < new_total) {
    new_total = budget;
    const size_t allocated = static_cast<size_t>(stats.allocated_bytes.current);
    const size_t headroom = budget > allocated ? budget - allocated : 0;
    if (headroom < new_free) new_free = headroom;
  }
  *free = new_free < new_total ? new_free : new_total;
  *total = new_total;
  return cudaSuccess;
}

}  // extern "C"
