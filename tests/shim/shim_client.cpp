// A CUDA program in miniature, linked against the fake libcudart: the shim test runs it with and
// without LD_PRELOAD=libactmem_preload.so and reads what it prints ("<key> <value>" lines).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <thread>
#include <vector>

extern "C" void* fake_cudart_direct_malloc(size_t size);
extern "C" void fake_cudart_report();

int main() {
  // A training loop's worth of repeated, same-sized allocations.
  int failures = 0;
  for (int i = 0; i < 1000; ++i) {
    std::vector<void*> step;
    for (size_t bytes : {4096, 100000, 3 << 20}) {
      void* p = nullptr;
      failures += cudaMalloc(&p, bytes) != cudaSuccess;
      step.push_back(p);
    }
    for (void* p : step) failures += cudaFree(p) != cudaSuccess;
  }
  std::printf("loop_failures %d\n", failures);

  // Live at exit: 1000 + 12 MiB.
  void* kept_small = nullptr;
  void* kept_large = nullptr;
  cudaMalloc(&kept_small, 1000);
  cudaMalloc(&kept_large, 12 << 20);

  // Stream-ordered allocation on a stream of its own.
  const auto stream = reinterpret_cast<cudaStream_t>(0x10);
  void* async_block = nullptr;
  std::printf("malloc_async %d\n", static_cast<int>(cudaMallocAsync(&async_block, 8192, stream)));
  std::printf("free_async %d\n", static_cast<int>(cudaFreeAsync(async_block, stream)));

  // cudaStreamPerThread is each thread's own stream: a block that one thread freed on it must not
  // go to the next thread while the first one's work may still be queued, only to a later one
  // once the free's event has completed (the fake's events: at their second query).
  void* per_thread[3] = {};
  int per_thread_failures = 0;
  for (void*& block : per_thread) {
    std::thread([&] {
      per_thread_failures += cudaMallocAsync(&block, 8192, cudaStreamPerThread) != cudaSuccess;
      per_thread_failures += cudaFreeAsync(block, cudaStreamPerThread) != cudaSuccess;
    }).join();
  }
  std::printf("per_thread_failures %d\nper_thread_block_reused_at_once %d\n"
              "per_thread_block_reused_after_its_event %d\n",
              per_thread_failures, static_cast<int>(per_thread[1] == per_thread[0]),
              static_cast<int>(per_thread[2] == per_thread[0]));

  // A pointer the program got elsewhere passes through to the real cudaFree.
  void* foreign = fake_cudart_direct_malloc(4096);
  std::printf("foreign_free %d\n", static_cast<int>(cudaFree(foreign)));

  // A double free is an error, never a second release.
  void* twice = nullptr;
  cudaMalloc(&twice, 2048);
  cudaFree(twice);
  std::printf("double_free %d\n", static_cast<int>(cudaFree(twice)));

  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  std::printf("mem_free %zu\nmem_total %zu\n", free_bytes, total_bytes);

  std::printf("zero_size %d\n", static_cast<int>(cudaMalloc(&twice, 0)));
  fake_cudart_report();
  return 0;
}
