// A library that uses CUDA, for a program to dlopen RTLD_LOCAL (local_client.cpp): its libcudart
// (the fake) is then outside the global scope, where the LD_PRELOAD shim's dlsym(RTLD_NEXT, ...)
// cannot see it. The shim must still find the real functions, and serve the allocations.
#include <cuda_runtime_api.h>

#include <cstdio>

extern "C" __attribute__((visibility("default"))) int cuda_user_run() {
  int failures = 0;
  for (int i = 0; i < 100; ++i) {
    void* p = nullptr;
    failures += cudaMalloc(&p, 1 << 20) != cudaSuccess;
    failures += cudaFree(p) != cudaSuccess;
  }
  std::printf("loop_failures %d\n", failures);
  return failures;
}
