// Backends and stream events for the allocator tests: the real ones, by name, and test doubles.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "allocator/backend.h"
#include "allocator/stream_events.h"

namespace actmem::alloc::testing {

// What the conformance suite is instantiated with: one real backend and its events.
struct BackendUnderTest {
  std::string name;
  // Returns nullptr and sets *skip_reason when the backend cannot run here (no GPU).
  std::function<std::unique_ptr<Backend>(std::string* skip_reason)> make_backend;
  std::function<std::unique_ptr<StreamEvents>()> make_events;
};

// Names the parameter in test output.
inline void PrintTo(const BackendUnderTest& backend, std::ostream* out) { *out << backend.name; }

// Every backend built into this binary: host always, cuda when the toolkit was found.
std::vector<BackendUnderTest> backends_under_test();

// Wraps a backend: fails once `capacity` bytes are out, and counts the calls.
class LimitedBackend final : public Backend {
 public:
  LimitedBackend(std::unique_ptr<Backend> upstream, std::size_t capacity)
      : upstream_(std::move(upstream)), capacity_(capacity) {}
  const char* name() const noexcept override { return upstream_->name(); }
  std::size_t in_use() const { return in_use_; }
  int allocations() const { return allocations_; }
  int deallocations() const { return deallocations_; }

 private:
  void* do_allocate(std::size_t bytes) override {
    if (in_use_ + bytes > capacity_) return nullptr;
    void* ptr = upstream_->allocate(bytes);
    if (ptr != nullptr) {
      in_use_ += bytes;
      ++allocations_;
    }
    return ptr;
  }
  void do_deallocate(void* ptr, std::size_t bytes) override {
    in_use_ -= bytes;
    ++deallocations_;
    upstream_->deallocate(ptr, bytes);
  }

  std::unique_ptr<Backend> upstream_;
  std::size_t capacity_;
  std::size_t in_use_ = 0;
  int allocations_ = 0;
  int deallocations_ = 0;
};

// Events that complete only when the test says the stream has caught up, or the allocator waits
// for it.
class ManualEvents final : public StreamEvents {
 public:
  struct State {
    std::set<Stream> busy;  // streams whose recorded events are still pending
    int live_events = 0;
    std::vector<Stream> synchronized;  // each synchronize(), in order
    std::map<Stream, Stream> across_threads;  // handles that name each thread's own stream
  };
  explicit ManualEvents(std::shared_ptr<State> state) : state_(std::move(state)) {}
  Event record(Stream stream) override {
    ++state_->live_events;
    return new Stream(stream);
  }
  bool is_complete(Event event) override {
    return state_->busy.count(*static_cast<Stream*>(event)) == 0;
  }
  void release(Event event) override {
    --state_->live_events;
    delete static_cast<Stream*>(event);
  }
  void synchronize(Stream stream) override {
    state_->synchronized.push_back(stream);
    state_->busy.erase(stream);
  }
  Stream across_threads(Stream stream) override {
    const auto found = state_->across_threads.find(stream);
    return found != state_->across_threads.end() ? found->second : stream;
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace actmem::alloc::testing
