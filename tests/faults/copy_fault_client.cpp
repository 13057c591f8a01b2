// The offload pipeline's CUDA half for fault injection (cuda_faults_test.cpp): the CUDA copy
// engine and a caching pool over pinned host memory, as the host store uses them, run under the
// fake libcudart (LD_PRELOAD) with FAKE_CUDART_FAIL=<function>:<N>. Every call that throws is
// caught and printed ("error <what>"), as the host store's caller would see it; at the end
// everything is given back and the fake's counters show what was not.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#include "allocator/caching_allocator.h"
#include "copy/cuda_copy_engine.h"
#include "copy/pinned_backend.h"


namespace {

int errors = 0;

template <typename Operation>
void attempt(Operation operation) {
  try {
    operation();
  } catch (const std::exception& error) {
    ++errors;
    std::printf("error %s\n", error.what());
  }
}

}  // namespace

int main() {
  using actmem::alloc::CachingAllocator;
  const auto compute = reinterpret_cast<actmem::alloc::Stream>(0x10);
  {
    std::unique_ptr<actmem::copy::CudaCopyEngine> engine;
    attempt([&] { engine = std::make_unique<actmem::copy::CudaCopyEngine>(0); });
    CachingAllocator pool(std::make_unique<actmem::copy::PinnedBackend>(),
                          actmem::alloc::AllocatorOptions{});
    std::vector<char> device(1 << 20, 7);  // the fake's "device" memory is the host's
    std::vector<void*> blocks;
    std::vector<actmem::copy::CopyEngine::Ticket> tickets;
    for (int i = 0; i < 6 && engine; ++i) {
      attempt([&] {
        void* block = pool.allocate(std::size_t{64} << (i * 2));
        blocks.push_back(block);
        tickets.push_back(engine->copy(block, device.data(), 4096, compute));
      });
      if (!tickets.empty()) {
        attempt([&] { engine->order_after(tickets.back(), compute); });
        attempt([&] { engine->finished(tickets.front()); });
      }
      if (i % 2 == 1 && !tickets.empty()) attempt([&] { engine->wait(tickets.back()); });
      attempt([&] { engine->time(); });
    }
    if (engine && !tickets.empty()) attempt([&] { engine->wait(tickets.back()); });
    for (void* block : blocks) pool.deallocate(block);
    attempt([&] { pool.empty_cache(); });
  }  // the engine and the pool go: what they held must go back
  std::printf("errors %d\n", errors);
  std::fflush(stdout);
  // The fake is preloaded, not linked: its report is looked up.
  const auto report = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "fake_cudart_report"));
  if (report == nullptr) {
    std::fprintf(stderr, "copy_fault_client: run it with LD_PRELOAD=libcudart_fake.so\n");
    return 2;
  }
  report();
  return 0;
}
