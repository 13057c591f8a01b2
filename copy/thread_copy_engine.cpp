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

namespace {

std::int64_t nanoseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

}  // namespace

void ThreadCopyEngine::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    queued_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and every copy done
    const Job job = jobs_.front();
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    if (job.bytes > 0) std::memcpy(job.dst, job.src, job.bytes);
    const std::int64_t copying = nanoseconds_since(start);
    lock.lock();
    jobs_.pop_front();
    ++done_;
    time_.copying_ns += copying;
    finished_.notify_all();
  }
}

bool ThreadCopyEngine::finished(Ticket ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  return ticket <= done_;
}

void ThreadCopyEngine::wait(Ticket ticket) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (ticket <= done_) return;
  const auto start = std::chrono::steady_clock::now();
  finished_.wait(lock, [&] { return ticket <= done_; });
  time_.exposed_ns += nanoseconds_since(start);
}

void ThreadCopyEngine::order_after(Ticket ticket, alloc::Stream /*stream*/) { wait(ticket); }

CopyEngine::Time ThreadCopyEngine::time() {
  std::lock_guard<std::mutex> lock(mutex_);
  return time_;
}

}  // namespace actmem::copy
