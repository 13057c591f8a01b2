// The copy engine of the CPU build: one worker thread that runs the copies in order with memcpy.
// The host streams of the CPU build have no queued work, so `after` orders nothing; a copy starts
// when the worker reaches it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

#include "copy/copy_engine.h"

namespace actmem::copy {

class ThreadCopyEngine final : public CopyEngine {
 public:
  ThreadCopyEngine();
  // Finishes the copies queued, then stops the worker.
  ~ThreadCopyEngine() override;
  ThreadCopyEngine(const ThreadCopyEngine&) = delete;
  ThreadCopyEngine& operator=(const ThreadCopyEngine&) = delete;

  Ticket copy(void* dst, const void* src, std::size_t bytes, alloc::Stream after) override;
  bool finished(Ticket ticket) override;
  void order_after(Ticket ticket, alloc::Stream stream) override;  // waits on the host
  void wait(Ticket ticket) override;
  Time time() override;
  alloc::Stream stream() const override { return alloc::kDefaultStream; }
  const char* name() const override { return "thread"; }

 private:
  struct Job {
    void* dst;
    const void* src;
    std::size_t bytes;
  };
  void work();

  std::mutex mutex_;
  std::condition_variable queued_;    // the worker waits for jobs
  std::condition_variable finished_;  // callers wait for tickets
  std::deque<Job> jobs_;
  Ticket issued_ = 0;    // the last ticket handed out
  Ticket done_ = 0;      // every ticket up to this one has finished
  Time time_;            // of the copies up to done_
  bool stopping_ = false;
  std::thread worker_;   // last: starts once the rest is ready
};

}  // namespace actmem::copy
