// The steady-clock SegmentTimer: each bracket's wall time, per thread.
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "policy/segment_timer.h"

namespace actmem {
namespace {

using Clock = std::chrono::steady_clock;

class ClockTimer final : public SegmentTimer {
 public:
  const char* name() const override { return "clock"; }

  void begin(std::uint64_t id) override {
    const Clock::time_point now = Clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    open_[std::this_thread::get_id()].push_back({id, now});
  }

  void end(std::uint64_t id) override {
    const Clock::time_point now = Clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    auto thread = open_.find(std::this_thread::get_id());
    if (thread != open_.end()) {
      std::vector<Open>& stack = thread->second;
      for (std::size_t i = stack.size(); i-- > 0;) {
        if (stack[i].id != id) continue;
        times_.forward_ns[id] +=
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - stack[i].start).count();
        stack.resize(i);  // with the brackets opened inside it and never closed
        if (stack.empty()) open_.erase(thread);
        return;
      }
    }
    throw std::logic_error("actmem: SegmentTimer::end(" + std::to_string(id) +
                           ") with no open bracket of that id on this thread");
  }

  SegmentTimes collect() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(times_, SegmentTimes{});
  }

 private:
  struct Open {
    std::uint64_t id;
    Clock::time_point start;
  };
  std::mutex mutex_;
  std::unordered_map<std::thread::id, std::vector<Open>> open_;  // per thread, innermost last
  SegmentTimes times_;
};

}  // namespace

std::unique_ptr<SegmentTimer> make_clock_timer() { return std::make_unique<ClockTimer>(); }

}  // namespace actmem
