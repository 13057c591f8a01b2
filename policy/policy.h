// What a policy decides, and about what: the interface between the hooks (which see every tensor
// autograd saves) and the policies (which choose what happens to it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace actmem {

enum class Action { kKeep, kOffload, kRecompute };
enum class LogLevel { kOff, kInfo, kDebug };

struct StepProfile;  // policy/step_profile.h

const char* to_string(Action action);

// A tensor autograd is about to save, as the hooks see it at pack time.
struct SavedTensorInfo {
  std::int64_t bytes = 0;  // bytes of the data the saved tensor refers to
  std::string segment;     // the enclosing segment's name, "" outside any segment
  std::vector<std::int64_t> shape;
  std::string dtype;
  std::int64_t order = 0;  // pack order within the step, from 0
  bool is_leaf = false;    // parameters, buffers, inputs: held outside autograd anyway
  // The device allocator's allocated bytes as the step's first tensor is saved (order 0 only: a
  // read of the allocator's stats takes its lock, once per step rather than per tensor).
  std::int64_t device_bytes = 0;
};

// A segment's input that the segment run just before it returned: a link of a recompute chain.
// When the policy drops it, the segment lets go of that input after its forward, and its rerun in
// backward rebuilds it by rerunning the segment that returned it first (which, if it dropped its
// own input, reruns the one before it, and so on up to a segment that kept its input): every
// segment still reruns once per backward, and the chain's saved tensors come back together.
struct SegmentLink {
  std::string segment;        // the segment starting
  std::string producer;       // the segment that returned the input
  std::int64_t position = 1;  // links in a row up to this one: 1 for the first after a kept input
  std::int64_t bytes = 0;     // the input's bytes
};

// Decides, per saved tensor, Keep, Offload or Recompute. Called on the thread that runs the
// forward op, possibly from several threads at once: implementations must be thread-safe.
// The hooks enforce the rules a policy cannot break: leaves are always kept, Recompute outside a
// segment means Keep, and Offload below the minimum size means Keep.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  virtual Action decide(const SavedTensorInfo& tensor) = 0;

  // For policies that learn from what they see (auto). When wants_profile(), the hooks record
  // each step and hand it to end_step after its backward; when evicts_under_pressure(), they
  // offload kept tensors when the device allocator runs short of its budget.
  virtual bool wants_profile() const { return false; }
  // When wants_profile(): whether the step in progress (or, between steps, the next one) needs the
  // whole profile: every pack and unpack with the device bytes then, the allocator's trace and
  // the segments' times. Asked as a step's first segment begins and after its first tensor was
  // decided. A step that does not gets a summary (StepProfile::detailed false): no allocator
  // call, trace or timer per saved tensor or segment.
  virtual bool profiles_step() const { return true; }
  // False for a policy that never has a segment rerun (its decisions are never kRecompute and it
  // does not evict): the hooks then skip what only a rerun needs.
  virtual bool may_recompute() const { return true; }
  // False for a policy that never sends a tensor to the host (its decisions are never kOffload
  // and it does not evict): nothing of its can hold device memory for a copy in flight.
  virtual bool may_offload() const { return true; }
  virtual bool evicts_under_pressure() const { return false; }
  // Whether the starting segment lets go of an input that the segment before it returned (see
  // SegmentLink). Asked as the segment starts, only when may_recompute(). Dropping an input is
  // worth it only where the segments' saved tensors are recomputed too.
  virtual bool drops_input(const SegmentLink& /*link*/) { return false; }
  virtual void end_step(const StepProfile& /*profile*/) {}
  // The host pool refused a tensor this policy chose to offload (it was full; the tensor is kept
  // instead). Called on the thread that sent it, during the step: a policy that sends out what it
  // can (auto's profiled step) recomputes the rest of the step instead.
  virtual void offload_refused() {}
};

// The policies by name: "keep" (everything stays), "recompute" (every segment is recomputed,
// from its input), "chain" (every segment is recomputed, and of each run of n linked segments only
// every k-th keeps its input, k ≈ √(n / c) where a segment saves c times its input's bytes: Chen
// et al.'s sublinear checkpointing, learned as policy/chain_spacing.h says),
// "offload" (every eligible tensor goes to host memory), "auto" (a plan under the budget that
// `budget` reports when a plan is made; see auto_policy.h). Throws std::invalid_argument for any
// other name, listing the valid ones.
struct PolicyOptions {
  std::function<std::optional<std::size_t>()> budget;  // for auto
  std::size_t offload_min_bytes = 64 * 1024;           // for auto's plan
  LogLevel log = LogLevel::kOff;
  // The host pool's budget (ACTMEM_HOST_BUDGET), none for no limit. At 0 nothing can be offloaded:
  // auto then profiles and plans with recompute and chains alone; above, its plans offload no more
  // at once than the pool holds.
  std::optional<std::size_t> host_capacity;
  // Whether the copies of an offload run beside compute (a side stream on CUDA): auto then prices
  // an offload at the copy time its window between pack and unpack does not hide.
  bool copies_overlap = false;
};
std::unique_ptr<Policy> make_policy(const std::string& name, const PolicyOptions& options = {});

}  // namespace actmem
