// Loads local_cuda_user's library RTLD_LOCAL, as Python loads extension modules, runs it and
// prints the fake libcudart's counters (see local_cuda_user.cpp).
#include <dlfcn.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: local_client LIBRARY\n");
    return 2;
  }
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  const auto run = reinterpret_cast<int (*)()>(dlsym(library, "cuda_user_run"));
  const auto report = reinterpret_cast<void (*)()>(dlsym(library, "fake_cudart_report"));
  if (run == nullptr || report == nullptr) {
    std::fprintf(stderr, "dlsym: %s\n", dlerror());
    return 2;
  }
  run();
  std::fflush(stdout);
  report();
  return 0;
}
