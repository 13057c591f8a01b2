// A stand-in for libcudart that serves "device" memory from the host and counts its calls, so the
// LD_PRELOAD shim can be tested for real on a machine without a GPU. It implements just the
// functions the shim and its test client use.
//
// FAKE_CUDART_REENTER=1 makes cudaMalloc call cudaMalloc and cudaFree again through the PLT, as a
// runtime calling its own public API would: under the shim, that re-enters the shim while the
// allocator is busy, which the shim must pass straight through.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kDeviceBytes = size_t{1} << 30;

struct FakeDevice {
  std::mutex mutex;
  std::unordered_map<void*, size_t> live;
  size_t live_bytes = 0;
  std::vector<size_t> malloc_sizes;
  int malloc_calls = 0;
  int free_calls = 0;
  int free_errors = 0;
  int synchronize_calls = 0;
  int events_recorded = 0;
};

FakeDevice& device() {
  static FakeDevice* d = new FakeDevice;
  return *d;
}

thread_local int t_inside_malloc = 0;

cudaError_t fake_allocate(void** ptr, size_t size) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  FakeDevice& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  ++d.malloc_calls;
  d.malloc_sizes.push_back(size);
  if (d.live_bytes + size > kDeviceBytes) return cudaErrorMemoryAllocation;
  *ptr = std::aligned_alloc(512, (size + 511) / 512 * 512);
  d.live.emplace(*ptr, size);
  d.live_bytes += size;
  return cudaSuccess;
}

cudaError_t fake_release(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  FakeDevice& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  ++d.free_calls;
  auto it = d.live.find(ptr);
  if (it == d.live.end()) {
    ++d.free_errors;
    return cudaErrorInvalidValue;
  }
  d.live_bytes -= it->second;
  d.live.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t size) {
  static const bool reenter = std::getenv("FAKE_CUDART_REENTER") != nullptr;
  if (reenter && t_inside_malloc == 0) {
    ++t_inside_malloc;
    void* scratch = nullptr;
    cudaMalloc(&scratch, 256);  // through the PLT: the shim's, when it is preloaded
    cudaFree(scratch);
    --t_inside_malloc;
  }
  return fake_allocate(ptr, size);
}
cudaError_t cudaFree(void* ptr) { return fake_release(ptr); }
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) { return fake_allocate(ptr, size); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return fake_release(ptr); }

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  FakeDevice& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  *free = kDeviceBytes - d.live_bytes;
  *total = kDeviceBytes;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  ++device().synchronize_calls;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) {
  ++device().events_recorded;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<int*>(event);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "fake cudart error"; }

// Not part of CUDA: memory straight from the fake device, which the shim never saw.
void* fake_cudart_direct_malloc(size_t size) {
  void* ptr = nullptr;
  fake_allocate(&ptr, size);
  return ptr;
}

// Prints the counters as "fake.<name> <value>" lines.
void fake_cudart_report() {
  FakeDevice& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  std::string sizes;
  for (size_t s : d.malloc_sizes) sizes += (sizes.empty() ? "" : ",") + std::to_string(s);
  std::printf("fake.malloc_calls %d\nfake.malloc_sizes %s\nfake.free_calls %d\n"
              "fake.free_errors %d\nfake.synchronize_calls %d\nfake.events_recorded %d\n"
              "fake.live_bytes %zu\n",
              d.malloc_calls, sizes.c_str(), d.free_calls, d.free_errors, d.synchronize_calls,
              d.events_recorded, d.live_bytes);
}

}  // extern "C"
