#include "copy/thread_copy_engine.h"

#include <chrono>
#include <cstring>

namespace actmem::copy {

ThreadCopyEngine::ThreadCopyEngine() : worker_([this] { work(); }) {}

ThreadCopyEngine::~ThreadCopyEngine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  queued_.notify_one();
  worker_.join();
}

CopyEngine::Ticket ThreadCopyEngine::copy(void* dst, const void* src, std::size_t bytes,
                                          alloc::Stream /*after*/) {
  Ticket ticket;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back({dst, src, bytes});
    ticket = ++issued_;
  }
  queued_.notify_one();
  return ticket;
}

void ThreadCopyEngine::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    queued_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and every copy done
    const Job job = jobs_.front();
    lock.unlock();
    if (job.bytes > 0) std::memcpy(job.dst, job.src, job.bytes);
    lock.lock();
    jobs_.pop_front();
    ++done_;
    finished_.notify_all();
  }
}

bool ThreadCopyEngine::finished(Ticket ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  return ticket <= done_;
}

void ThreadCopyEngine::wait(Ticket ticket) {
  std::unique_lock<std::mutex> lock(mutex_);
  finished_.wait(lock, [&] { return ticket <= done_; });
}

std::int64_t ThreadCopyEngine::order_after(Ticket ticket, alloc::Stream /*stream*/) {
  const auto start = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ticket <= done_) return 0;
  }
  wait(ticket);
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

}  // namespace actmem::copy
