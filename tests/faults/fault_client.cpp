// A scripted allocation workload for fault injection (cuda_faults_test.cpp): run against the fake
// libcudart with FAKE_CUDART_FAIL=<function>:<N>, it must end with everything freed, whatever call
// failed. It prints "<key> <value>" lines, then the fake's counters.
//
// Built twice (tests/CMakeLists.txt):
//   fault_client_capi      (FAULT_CLIENT_CAPI) through actmem's C ABI, linked to libactmem_alloc.so
//   fault_client_runtime   through cudaMalloc/cudaFree/cudaMallocAsync/cudaFreeAsync, for the
//                          LD_PRELOAD shim to serve; it does not link libactmem_alloc.so, whose
//                          own allocators would write ACTMEM_STATS over the shim's at exit
//
// Each round allocates blocks of mixed sizes on three streams, marks some as used on a fourth
// (record_stream, or a cudaFreeAsync on another stream), and frees the older half; in between the
// budget is lowered and raised and the cache emptied (C ABI). A program that is told a free
// failed tries it once more, as a careful one would.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#if defined(FAULT_CLIENT_CAPI)
#include "allocator/actmem_alloc.h"
#endif

extern "C" void fake_cudart_report();

namespace {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;

cudaStream_t stream(int id) { return reinterpret_cast<cudaStream_t>(0x10 * (id + 1)); }

#if defined(FAULT_CLIENT_CAPI)
// actmem's C ABI.
struct Api {
  static void* allocate(size_t bytes, cudaStream_t on) { return actmem_malloc(bytes, 0, on); }
  static void use_elsewhere(void* ptr) { actmem_record_stream(ptr, 0, stream(3)); }
  // The C ABI's free cannot fail: it reports nothing.
  static cudaError_t release(void* ptr, cudaStream_t on, bool /*on_other_stream*/) {
    actmem_free(ptr, 0, 0, on);
    return cudaSuccess;
  }
  static void between_rounds(int round) {
    if (round % 3 == 1) actmem_set_budget(0, 64 * MiB);
    if (round % 3 == 2) actmem_set_budget(0, 0);
    if (round % 3 == 0) actmem_empty_cache();
  }
  static void at_end() {
    for (int i = 0; i < 3; ++i) actmem_empty_cache();
    const char* error = actmem_last_error();
    std::printf("last_error %s\nstats %s\n", error ? error : "none", actmem_stats_json());
  }
};
#else
// The CUDA runtime's allocation functions, for the LD_PRELOAD shim to serve.
struct Api {
  static void* allocate(size_t bytes, cudaStream_t on) {
    void* ptr = nullptr;
    return cudaMallocAsync(&ptr, bytes, on) == cudaSuccess ? ptr : nullptr;
  }
  static void use_elsewhere(void* /*ptr*/) {}  // a free on another stream says it instead
  static cudaError_t release(void* ptr, cudaStream_t /*on*/, bool on_other_stream) {
    return on_other_stream ? cudaFreeAsync(ptr, stream(3)) : cudaFree(ptr);
  }
  static void between_rounds(int /*round*/) {}
  static void at_end() {}
};
#endif

struct Held {
  void* ptr;
  cudaStream_t stream;
};

class Workload {
 public:
  void run() {
    const size_t sizes[] = {700, 40 * KiB, 1 * MiB + 3, 3 * MiB, 9 * MiB};
    std::vector<Held> held;
    for (int round = 0; round < 8; ++round) {
      for (int i = 0; i < 5; ++i) {
        const cudaStream_t on = stream((round + i) % 3);
        void* ptr = Api::allocate(sizes[(round + i) % 5], on);
        if (ptr == nullptr) {
          ++malloc_failures_;
          continue;
        }
        std::memset(ptr, round, 64);
        if (i % 2 == 0) Api::use_elsewhere(ptr);
        held.push_back({ptr, on});
      }
      std::vector<Held> still;
      for (size_t k = 0; k < held.size(); ++k) {
        if (k % 2 == 0) {
          release(held[k], /*on_other_stream=*/k % 4 == 0);
        } else {
          still.push_back(held[k]);
        }
      }
      held = std::move(still);
      Api::between_rounds(round);
    }
    for (const Held& h : held) release(h, false);
    std::printf("malloc_failures %d\nfree_errors %d\nfree_failures %d\n", malloc_failures_,
                free_errors_, free_failures_);
    Api::at_end();
  }

 private:
  // A free that fails is tried once more, as a careful program would.
  void release(const Held& held, bool on_other_stream) {
    cudaError_t status = Api::release(held.ptr, held.stream, on_other_stream);
    if (status != cudaSuccess) {
      ++free_errors_;
      std::fprintf(stderr, "free failed: %s\n", cudaGetErrorString(status));
      status = Api::release(held.ptr, held.stream, on_other_stream);
    }
    if (status != cudaSuccess) ++free_failures_;
  }

  int malloc_failures_ = 0;
  int free_errors_ = 0;
  int free_failures_ = 0;
};

}  // namespace

int main() {
  Workload workload;
  workload.run();
  std::fflush(stdout);
  fake_cudart_report();
  return 0;
}
