// A copy engine that copies at once, on the calling thread: every copy has finished when copy()
// returns. The CPU build's default: there the host streams run nothing asynchronously and a second
// thread's memcpy would compete with compute for the same cores, and with copies finished at once
// the store lets go of each source at once, so the bytes a step holds are the same every run.
// (ThreadCopyEngine is the asynchronous one, which the pipeline's tests run on.)
#pragma once

#include <atomic>
#include <chrono>
#include <cstring>

#include "copy/copy_engine.h"

namespace actmem::copy {

class InlineCopyEngine final : public CopyEngine {
 public:
  // The caller waits for the whole copy: all of its time is exposed.
  Ticket copy(void* dst, const void* src, std::size_t bytes, alloc::Stream /*after*/) override {
    if (bytes > 0) {
      const auto start = std::chrono::steady_clock::now();
      std::memcpy(dst, src, bytes);
      copying_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    }
    return ++issued_;
  }
  bool finished(Ticket /*ticket*/) override { return true; }
  void order_after(Ticket /*ticket*/, alloc::Stream /*stream*/) override {}
  void wait(Ticket /*ticket*/) override {}
  Time time() override {
    const std::int64_t copying = copying_ns_;
    return {copying, copying};
  }
  alloc::Stream stream() const override { return alloc::kDefaultStream; }
  const char* name() const override { return "inline"; }

 private:
  std::atomic<Ticket> issued_{0};
  std::atomic<std::int64_t> copying_ns_{0};
};

}  // namespace actmem::copy
