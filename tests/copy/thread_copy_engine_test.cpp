// The CPU build's copy engine: copies run in the order queued, on its own thread, and a caller
// can poll, order after, or wait for each.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include "copy/thread_copy_engine.h"

namespace actmem::copy {
namespace {

TEST(ThreadCopyEngine, CopiesInOrderAndTicketsFinishInOrder) {
  ThreadCopyEngine engine;
  constexpr int kCopies = 64;
  std::vector<std::vector<std::uint8_t>> sources(kCopies), destinations(kCopies);
  std::vector<CopyEngine::Ticket> tickets;
  for (int i = 0; i < kCopies; ++i) {
    sources[i].assign(4096 * (i % 7 + 1), static_cast<std::uint8_t>(i));
    destinations[i].assign(sources[i].size(), 0);
    tickets.push_back(engine.copy(destinations[i].data(), sources[i].data(), sources[i].size(),
                                  alloc::kDefaultStream));
  }
  for (int i = 1; i < kCopies; ++i) EXPECT_EQ(tickets[i], tickets[i - 1] + 1);
  engine.wait(tickets.back());
  for (int i = 0; i < kCopies; ++i) {
    EXPECT_TRUE(engine.finished(tickets[i])) << "an earlier copy finished before the last";
    EXPECT_EQ(destinations[i], sources[i]) << i;
  }
  const CopyEngine::Time before = engine.time();
  engine.order_after(tickets.back(), alloc::kDefaultStream);
  EXPECT_EQ(engine.time().exposed_ns, before.exposed_ns) << "no wait: done";
}

// Whether the copy is still running when order_after() comes is up to the scheduler; what holds
// either way: the wait counted is within the call, and the copy's time is counted once it is done.
TEST(ThreadCopyEngine, OrderAfterWaitsOnTheHostAndCountsTheWaitAsExposed) {
  ThreadCopyEngine engine;
  std::vector<std::uint8_t> big(64 << 20, 7), target(big.size());
  EXPECT_EQ(engine.time().copying_ns, 0);
  const CopyEngine::Ticket ticket =
      engine.copy(target.data(), big.data(), big.size(), alloc::kDefaultStream);
  const auto start = std::chrono::steady_clock::now();
  engine.order_after(ticket, alloc::kDefaultStream);
  const std::int64_t call_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - start)
                                   .count();
  EXPECT_TRUE(engine.finished(ticket));
  EXPECT_EQ(target, big);
  const CopyEngine::Time time = engine.time();
  EXPECT_GT(time.copying_ns, 0) << "64 MiB take some time to copy";
  EXPECT_GE(time.exposed_ns, 0);
  EXPECT_LE(time.exposed_ns, call_ns);
}

TEST(ThreadCopyEngine, TheDestructorFinishesWhatWasQueued) {
  std::vector<std::uint8_t> source(1 << 20, 3), target(source.size(), 0);
  {
    ThreadCopyEngine engine;
    for (int i = 0; i < 8; ++i) {
      engine.copy(target.data(), source.data(), source.size(), alloc::kDefaultStream);
    }
  }
  EXPECT_EQ(target, source);
}

TEST(ThreadCopyEngine, ThreadsMayQueueAtOnce) {
  ThreadCopyEngine engine;
  constexpr int kThreads = 4, kEach = 100;
  std::vector<std::vector<std::uint64_t>> targets(kThreads, std::vector<std::uint64_t>(kEach));
  std::vector<std::uint64_t> values(kEach);
  std::iota(values.begin(), values.end(), 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CopyEngine::Ticket last = 0;
      for (int i = 0; i < kEach; ++i) {
        last = engine.copy(&targets[t][i], &values[i], sizeof(std::uint64_t),
                           alloc::kDefaultStream);
      }
      engine.wait(last);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(targets[t], values) << t;
}

}  // namespace
}  // namespace actmem::copy
