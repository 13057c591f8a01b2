// ActivationScope: while one lives on a thread, every tensor autograd saves on that thread is
// handed to its policy (keep, offload, recompute). Without one, actmem's hooks return nothing and
// autograd behaves exactly as without actmem.
//
//   actmem::install();
//   actmem::ActivationScope scope(actmem::make_policy("recompute"));
//   auto loss = model.forward(batch);   // segments inside are recomputed in backward
//   loss.backward();
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "hooks/host_store.h"
#include "policy/policy.h"

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
  std::int64_t copy_bytes = 0;  // device->host and host->device together
  std::int64_t copy_ns = 0;
};

struct ScopeOptions {
  std::size_t offload_min_bytes = 64 * 1024;   // smaller tensors are kept
  std::optional<std::size_t> host_capacity;    // cap on the host pool; none by default
};

namespace detail {
// Shared by the scope and every hooks object it created, so unpack (on autograd's thread, after
// the scope may be gone) still finds the policy's store and counters.
struct ScopeState {
  std::shared_ptr<Policy> policy;
  ScopeOptions options;
  HostStore host;
  std::atomic<std::int64_t> order{0};

  ScopeState(std::shared_ptr<Policy> p, ScopeOptions o)
      : policy(std::move(p)), options(o), host(o.host_capacity) {}

  // Updates the counters: `update(ActivationStats&)` runs under their lock.
  template <typename Update>
  void count(Update&& update) {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    update(stats_);
  }
  ActivationStats stats() {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    return stats_;
  }

 private:
  std::mutex stats_mutex_;
  ActivationStats stats_;
};

// Nanoseconds since `start`.
inline std::int64_t elapsed_ns(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

// The scope active on this thread, or null.
const std::shared_ptr<ScopeState>& active_scope();
}  // namespace detail

class ActivationScope {
 public:
  explicit ActivationScope(std::shared_ptr<Policy> policy, ScopeOptions options = {});
  // A scope with the policy and minimum offload size that ACTMEM_POLICY and
  // ACTMEM_OFFLOAD_MIN_BYTES name (see policy/policy_config.h); throws std::invalid_argument for a
  // malformed value.
  static std::unique_ptr<ActivationScope> from_environment();
  ~ActivationScope();
  ActivationScope(const ActivationScope&) = delete;
  ActivationScope& operator=(const ActivationScope&) = delete;

  ActivationStats stats() const;
  HostStore& host_store() { return state_->host; }

 private:
  std::shared_ptr<detail::ScopeState> state_;
  std::shared_ptr<detail::ScopeState> previous_;
};

}  // namespace actmem
