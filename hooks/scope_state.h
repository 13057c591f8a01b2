// Internal: what an ActivationScope shares with every hooks object it made (unpack runs on
// autograd's thread, possibly after the scope is gone): the policy, the host store, the counters,
// the step in progress and, for policies that learn, its profile and the kept tensors that can be
// evicted under pressure.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/StorageImpl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hooks/activation_scope.h"
#include "hooks/host_store.h"
#include "policy/policy.h"
#include "policy/step_profile.h"

namespace actmem::detail {

struct SegmentFrame;

// Nanoseconds since `start`.
inline std::int64_t elapsed_ns(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

// One saved tensor under a scope, shared by its hooks object and, while kept, the eviction list.
// The mutex guards action, kept and host: eviction may turn a kept tensor into an offloaded one
// while autograd still holds it.
struct SavedEntry {
  std::mutex mutex;
  Action action = Action::kKeep;
  at::Tensor kept;
  at::Tensor host;
  std::shared_ptr<SegmentFrame> frame;  // only while the segment may be rerun for it
  std::int64_t index = -1;              // its pack index within the frame
  std::int64_t bytes = 0;
  std::chrono::steady_clock::time_point packed_at;
  std::uint64_t step = 0;         // the step it was packed in
  std::int64_t profile_index = -1;  // its row in that step's profile, -1 when not recorded
};

class ScopeState {
 public:
  ScopeState(std::shared_ptr<Policy> policy, ScopeOptions options);

  Policy& policy() { return *policy_; }
  const ScopeOptions& options() const { return options_; }
  HostStore& host() { return host_; }

  // Updates the counters: `update(ActivationStats&)` runs under their lock.
  template <typename Update>
  void count(Update&& update) {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    update(stats_);
  }
  ActivationStats stats();

  // A pack: starts a step if none is in progress (or if every tensor of the one in progress is
  // gone: its graph was dropped, by an exception or on purpose), sets entry.step, and returns the
  // tensor's order in the step.
  std::int64_t begin_pack(const std::shared_ptr<SavedEntry>& entry);
  // Records a pack for the profile (when the policy wants one) and registers a kept tensor for
  // eviction (when the policy evicts).
  void record_pack(const std::shared_ptr<SavedEntry>& entry, const SavedTensorInfo& info,
                   const at::Tensor& tensor, bool segment_input);
  void record_unpack(const SavedEntry& entry);
  void record_segment(const std::string& name, std::int64_t forward_ns);
  // The outermost backward returned: the step is over; its profile goes to the policy.
  void end_step();
  // The backward threw: the step is over, and its profile is worth nothing.
  void abort_step();

  // Offloads kept tensors that nothing else holds, the stalest first (DTR's cost / (bytes x
  // staleness) with the copy as the cost), returning freed segments to the backend, until
  // `bytes_needed` reserved bytes are released or no candidate is left; returns the bytes freed.
  std::size_t evict(std::size_t bytes_needed);

 private:
  double copy_bytes_per_second();  // measured once
  void mark_freeable();            // step_mutex_ held

  std::shared_ptr<Policy> policy_;
  ScopeOptions options_;
  HostStore host_;

  std::mutex stats_mutex_;
  ActivationStats stats_;

  std::atomic<double> copy_bytes_per_second_{0};

  // Lock order: step_mutex_ before any SavedEntry::mutex, never the other way round.
  std::mutex step_mutex_;  // everything below
  bool in_step_ = false;
  std::uint64_t step_ = 0;
  std::int64_t next_order_ = 0;
  std::chrono::steady_clock::time_point step_start_;
  StepProfile profile_;
  bool backward_began_ = false;
  std::vector<std::weak_ptr<SavedEntry>> step_entries_;  // this step's
  // Keeps each profiled storage's address from being reused within the step, so it stays an id.
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> step_storages_;
  std::vector<std::weak_ptr<SavedEntry>> evictable_;
};

// The scope active on this thread, or null.
const std::shared_ptr<ScopeState>& active_scope();

// Called by the engine when the outermost backward on this thread returns, or throws.
void backward_finished();
void backward_failed();

}  // namespace actmem::detail
