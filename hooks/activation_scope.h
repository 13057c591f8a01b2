// ActivationScope: while one lives on a thread, every tensor autograd saves on that thread is
// handed to its policy (keep, offload, recompute). Without one, actmem's hooks return nothing and
// autograd behaves exactly as without actmem.
//
//   actmem::install();
//   actmem::ActivationScope scope(actmem::make_policy("recompute"));
//   auto loss = model.forward(batch);   // segments inside are recomputed in backward
//   loss.backward();
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "hooks/host_store.h"
#include "hooks/out_of_memory.h"
#include "policy/policy.h"
#include "policy/policy_config.h"

namespace actmem {

// What the hooks did, since the scope started. All counts are cumulative.
struct ActivationStats {
  std::int64_t packed = 0;  // tensors autograd saved
  std::int64_t unpacked = 0;
  std::int64_t tensors_kept = 0, bytes_kept = 0;
  std::int64_t tensors_offloaded = 0, bytes_offloaded = 0;
  std::int64_t tensors_recomputed = 0, bytes_recomputed = 0;
  std::int64_t offload_fallbacks = 0;  // offloads kept instead: the host pool could not grow
  std::int64_t recomputations = 0;     // segment forwards rerun in backward
  std::int64_t recompute_ns = 0;
  TransferStats transfers;  // the host store's copies (hooks/host_store.h)
  std::int64_t evictions = 0;  // kept tensors offloaded because the device budget ran short
  std::int64_t bytes_evicted = 0;
  std::int64_t drops = 0;  // kept tensors dropped for their segment's rerun, for the same reason
  std::int64_t bytes_dropped = 0;
  std::int64_t steps = 0;  // forward-and-backward passes seen
};

// The counters as one JSON object, keys as the fields are named ("transfers" nested).
std::string to_json(const ActivationStats& stats);

struct ScopeOptions {
  std::size_t offload_min_bytes = 64 * 1024;  // smaller tensors are kept
  std::optional<std::size_t> host_capacity;   // cap on the host pool (0: no offload); none
  // Device bytes copied back ahead of the unpacks that need them (Note [Offload pipeline]); the
  // device's default when empty (HostStoreOptions).
  std::optional<std::size_t> prefetch_window;
  LogLevel log = LogLevel::kOff;  // what the hooks say on stderr (ACTMEM_LOG)

  // The options the policy's environment variables name (policy/policy_config.h).
  static ScopeOptions from(const PolicyConfig& config);
};

namespace detail {
class ScopeState;
}  // namespace detail

// make_policy (policy/policy.h) for the device: auto's budget is the device allocator's
// (ACTMEM_BUDGET, or CachingAllocator::set_budget), read whenever auto plans.
std::unique_ptr<Policy> make_device_policy(const std::string& name,
                                           std::size_t offload_min_bytes = 64 * 1024,
                                           LogLevel log = LogLevel::kOff);
// The policy a configuration names (ACTMEM_POLICY and the rest, policy/policy_config.h): with
// ACTMEM_HOST_BUDGET=0, auto plans without offloads.
std::unique_ptr<Policy> make_device_policy(const PolicyConfig& config);

class ActivationScope {
 public:
  explicit ActivationScope(std::shared_ptr<Policy> policy, ScopeOptions options = {});
  // A scope with the policy, minimum offload size and log level that ACTMEM_POLICY,
  // ACTMEM_OFFLOAD_MIN_BYTES and ACTMEM_LOG name (see policy/policy_config.h; auto's budget is the
  // device allocator's, ACTMEM_BUDGET); throws std::invalid_argument for a malformed value.
  static std::unique_ptr<ActivationScope> from_environment();
  ~ActivationScope();
  ActivationScope(const ActivationScope&) = delete;
  ActivationScope& operator=(const ActivationScope&) = delete;

  ActivationStats stats() const;
  // stats(), readable after the scope is gone (the function shares the scope's state).
  std::function<ActivationStats()> stats_source() const;
  // The store the scope offloads to: the one of the device of the first tensor of the managed
  // kind packed under the scope or given to one of its segments (Note [The device a scope
  // serves], hooks/scope_state.h); made for the current device if there was none yet.
  HostStore& host_store();
  // The device the scope serves (see host_store()); none before its first tensor of the managed
  // kind.
  std::optional<c10::Device> device() const;

  // While a Pause lives, the scope is not active on this thread (the scope that was active when it
  // was made is active again) and the device allocator's pressure no longer reaches it; its
  // policy, plans and host pool stay as they are. For programs that alternate between scopes,
  // such as two models trained in turn (the main job interleaves its rows so). The scope must be
  // the one active on this thread when the Pause is made (else std::logic_error), nothing made
  // active since may still be active when it ends, and it must not outlive the scope.
  class Pause {
   public:
    explicit Pause(ActivationScope& scope);
    ~Pause();
    Pause(const Pause&) = delete;
    Pause& operator=(const Pause&) = delete;

   private:
    ActivationScope& scope_;
  };

 private:
  std::shared_ptr<detail::ScopeState> state_;
  std::shared_ptr<detail::ScopeState> previous_;
};

}  // namespace actmem
