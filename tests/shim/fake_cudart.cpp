// A stand-in for libcudart that serves "device" memory from the host and counts its calls, so the
// LD_PRELOAD shim, the C ABI's CUDA backend and the copy engine can be tested for real on a
// machine without a GPU. It implements just the functions those use.
//
// FAKE_CUDART_REENTER=1 makes cudaMalloc call cudaMalloc and cudaFree again through the PLT, as a
// runtime calling its own public API would: under the shim, that re-enters the shim while the
// allocator is busy, which the shim must pass straight through.
//
// FAKE_CUDART_FAIL=<function>:<N> fails the Nth call of that function (fault injection): with
// cudaErrorMemoryAllocation for the allocating ones, cudaErrorLaunchFailure for the rest, and
// cudaGetErrorString then says "injected failure of <function> #<N>". fake_cudart_report() prints
// how often each function was called ("fake.calls.<function> <count>"), so a test can fail every
// call in turn.
//
// Built with FAKE_CUDART_WITHOUT_EVENTS, it lacks cudaEventRecord and cudaEventQuery.
//
// Events complete at their second query (cudaErrorNotReady at the first), so that frees recorded
// on other streams wait for a while.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
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

// The calls counted, and the one FAKE_CUDART_FAIL names.
struct Faults {
  std::mutex mutex;
  std::map<std::string, int> calls;
  std::string function;
  int nth = 0;
  std::string message;
  int live_events = 0;
  int live_streams = 0;
  std::map<void*, size_t> pinned;  // cudaHostAlloc'd, not yet freed

  Faults() {
    const char* spec = std::getenv("FAKE_CUDART_FAIL");
    if (spec == nullptr) return;
    const std::string text = spec;
    const std::size_t colon = text.find(':');
    if (colon == std::string::npos) {
      std::fprintf(stderr, "FAKE_CUDART_FAIL='%s': expected <function>:<N>\n", spec);
      std::_Exit(2);
    }
    function = text.substr(0, colon);
    nth = std::atoi(text.c_str() + colon + 1);
    message = "injected failure of " + function + " #" + std::to_string(nth);
  }
};

Faults& faults() {
  static Faults* f = new Faults;
  return *f;
}

// Counts a call of `function`; true when it is the one to fail.
bool fails(const char* function) {
  Faults& f = faults();
  std::lock_guard<std::mutex> lock(f.mutex);
  return ++f.calls[function] == f.nth && f.function == function;
}

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
  if (fails("cudaMalloc")) return cudaErrorMemoryAllocation;
  return fake_allocate(ptr, size);
}
cudaError_t cudaFree(void* ptr) {
  if (fails("cudaFree")) return cudaErrorLaunchFailure;
  return fake_release(ptr);
}
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) {
  if (fails("cudaMallocAsync")) return cudaErrorMemoryAllocation;
  return fake_allocate(ptr, size);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) {
  if (fails("cudaFreeAsync")) return cudaErrorLaunchFailure;
  return fake_release(ptr);
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  FakeDevice& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  *free = kDeviceBytes - d.live_bytes;
  *total = kDeviceBytes;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (fails("cudaGetDevice")) return cudaErrorLaunchFailure;
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (fails("cudaSetDevice")) return cudaErrorLaunchFailure;
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  if (fails("cudaDeviceSynchronize")) return cudaErrorLaunchFailure;
  ++device().synchronize_calls;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  if (fails("cudaEventCreateWithFlags")) return cudaErrorMemoryAllocation;
  *event = reinterpret_cast<cudaEvent_t>(new int(0));
  std::lock_guard<std::mutex> lock(faults().mutex);
  ++faults().live_events;
  return cudaSuccess;
}
#if !defined(FAKE_CUDART_WITHOUT_EVENTS)  // a runtime too old or too partial for the shim
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) {
  if (fails("cudaEventRecord")) return cudaErrorLaunchFailure;
  ++device().events_recorded;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (fails("cudaEventQuery")) return cudaErrorLaunchFailure;
  return ++*reinterpret_cast<int*>(event) >= 2 ? cudaSuccess : cudaErrorNotReady;
}
#endif
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<int*>(event);
  std::lock_guard<std::mutex> lock(faults().mutex);
  --faults().live_events;
  return cudaSuccess;
}
// The copy engine's and the pinned pool's functions (copy/), for the fault tests: copies run at
// once, on the host; streams are tokens.
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (fails("cudaEventCreate")) return cudaErrorMemoryAllocation;
  *event = reinterpret_cast<cudaEvent_t>(new int(0));
  std::lock_guard<std::mutex> lock(faults().mutex);
  ++faults().live_events;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (fails("cudaEventSynchronize")) return cudaErrorLaunchFailure;
  *reinterpret_cast<int*>(event) = 2;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t, cudaEvent_t) {
  if (fails("cudaEventElapsedTime")) return cudaErrorLaunchFailure;
  *milliseconds = 0.001f;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  if (fails("cudaStreamCreateWithFlags")) return cudaErrorMemoryAllocation;
  *stream = reinterpret_cast<cudaStream_t>(new int(0));
  std::lock_guard<std::mutex> lock(faults().mutex);
  ++faults().live_streams;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<int*>(stream);
  std::lock_guard<std::mutex> lock(faults().mutex);
  --faults().live_streams;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return fails("cudaStreamSynchronize") ? cudaErrorLaunchFailure : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) {
  return fails("cudaStreamWaitEvent") ? cudaErrorLaunchFailure : cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (fails("cudaMemcpyAsync")) return cudaErrorLaunchFailure;
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  if (fails("cudaHostAlloc")) return cudaErrorMemoryAllocation;
  *ptr = std::aligned_alloc(512, (size + 511) / 512 * 512);
  std::lock_guard<std::mutex> lock(faults().mutex);
  faults().pinned[*ptr] = size;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  if (fails("cudaFreeHost")) return cudaErrorLaunchFailure;
  std::lock_guard<std::mutex> lock(faults().mutex);
  if (faults().pinned.erase(ptr) == 0) return cudaErrorInvalidValue;
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaErrorLaunchFailure || error == cudaErrorMemoryAllocation) {
    if (!faults().message.empty()) return faults().message.c_str();
  }
  return "fake cudart error";
}

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
  Faults& f = faults();
  std::lock_guard<std::mutex> faults_lock(f.mutex);
  size_t pinned_bytes = 0;
  for (const auto& [ptr, size] : f.pinned) pinned_bytes += size;
  std::printf("fake.live_events %d\nfake.live_streams %d\nfake.pinned_bytes %zu\n", f.live_events,
              f.live_streams, pinned_bytes);
  for (const auto& [function, count] : f.calls) std::printf("fake.calls.%s %d\n", function.c_str(), count);
}

}  // extern "C"
