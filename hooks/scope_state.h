// Internal: what an ActivationScope shares with every hooks object it made (unpack runs on
// autograd's thread, possibly after the scope is gone): the policy, the host store, the counters,
// the step in progress and, for policies that learn, its profile and the kept tensors that can be
// evicted under pressure.
#pragma once

#include <ATen/core/Tensor.h>

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

  // A pack: starts a step if none is in progress, and returns the tensor's order in it.
  std::int64_t begin_pack(std::uint64_t* step);
  // Records a pack for the profile (when the policy wants one) and registers a kept tensor for
  // eviction (when the policy evicts). `storage` identifies the tensor's memory.
  void record_pack(const std::shared_ptr<SavedEntry>& entry, const SavedTensorInfo& info,
                   std::uint64_t storage, bool segment_input);
  void record_unpack(const SavedEntry& entry);
  void record_segment(const std::string& name, std::int64_t forward_ns);
  // Backward returned: the step is over; its profile goes to the policy.
  void end_step();

  // Offloads kept tensors, the best DTR score first, until `bytes_needed` device bytes are free
  // or none is left; returns the device bytes freed.
  std::size_t evict(std::size_t bytes_needed);

 private:
  double copy_bytes_per_second();  // measured once

  std::shared_ptr<Policy> policy_;
  ScopeOptions options_;
  HostStore host_;

  std::mutex stats_mutex_;
  ActivationStats stats_;

  std::mutex step_mutex_;  // everything below
  bool in_step_ = false;
  std::uint64_t step_ = 0;
  std::int64_t next_order_ = 0;
  std::chrono::steady_clock::time_point step_start_;
  StepProfile profile_;
  std::vector<std::weak_ptr<SavedEntry>> evictable_;
  std::vector<std::weak_ptr<SavedEntry>> step_entries_;  // this step's, when profiling
  bool backward_began_ = false;


  void mark_freeable();  // step_mutex_ held
  double copy_bytes_per_second_ = 0;
};

// The scope active on this thread, or null.
const std::shared_ptr<ScopeState>& active_scope();

// Called by the engine when a backward returns on this thread.
void backward_finished();

}  // namespace actmem::detail
