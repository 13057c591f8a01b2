// What the hooks observed of one training step, for policies that learn from it (auto): every
// saved tensor with its pack and unpack times and the device bytes allocated then, every
// segment's forward time, and the host copy bandwidth. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "policy/policy.h"

namespace actmem {

struct ProfiledTensor {
  std::int64_t order = 0;  // pack order within the step
  std::int64_t bytes = 0;
  std::string segment;             // "" outside any segment
  std::uint64_t storage = 0;       // identifies the memory: tensors with the same value share it
  std::int64_t storage_bytes = 0;  // the whole storage's (a view's is larger than its own bytes)
  bool is_leaf = false;
  // What the hooks did with it at pack: the profiled step keeps everything when no budget is set,
  // and sends out what it can under one (so that it fits).
  Action action = Action::kKeep;
  std::int64_t pack_copy_ns = 0;  // the offload's copy, inside its segment's forward time
  bool segment_input = false;     // the storage is an input of its segment (the segment holds it)
  // Whether dropping every saved copy of its storage would free it: at the start of backward,
  // nothing but saved tensors held it (a tensor sent out at pack: nothing held its storage any
  // more). False for what the model or the caller still holds.
  bool freeable = false;
  bool evicted = false;             // offloaded under pressure after it was kept
  std::int64_t evicted_bytes = 0;   // the device bytes that eviction freed
  std::int64_t evicted_event = -1;  // when, as an index into StepProfile::levels
  std::int64_t pack_event = 0;      // index into StepProfile::levels
  std::int64_t unpack_event = -1;   // -1: not unpacked in this step
};

struct ProfiledSegment {
  std::string name;
  std::int64_t forward_ns = 0;
  // Its inputs that the segment before it returned (policy.h's SegmentLink), by storage (the ids
  // of ProfiledTensor::storage): what a plan may drop for a recompute chain. `producer` is that
  // segment, "" when the segment has no link.
  std::string producer;
  std::vector<std::uint64_t> link_storages;
  bool dropped_link = false;  // the step dropped them: its rerun reran `producer` first
  // The first event after its forward returned, as an index into StepProfile::levels: the hooks
  // hold the tensors it saved for recompute until then (Note [A segment's forward may read what it
  // saved] in hooks/segment_frame.h). -1 when unknown.
  std::int64_t end_event = -1;
};

struct StepProfile {
  // False for a step the policy did not need profiled (Policy::profiles_step): a summary with
  // only step_ns, reserved_peak_bytes, evictions and offload_refusals; everything else is empty.
  bool detailed = true;
  std::vector<ProfiledTensor> tensors;    // in pack order
  std::vector<ProfiledSegment> segments;  // in forward order
  // Device bytes allocated at each pack and unpack, in the order they happened.
  std::vector<std::int64_t> levels;
  std::vector<std::int64_t> event_ns;  // when each event happened, since the step began
  // The most device bytes allocated from each event until the next, from the allocator's trace
  // (the working sets of the ops in between); empty when no trace was recorded.
  std::vector<std::int64_t> peaks;
  std::int64_t step_ns = 0;          // first pack to the end of backward
  double copy_bytes_per_second = 0;  // host<->device, measured
  std::int64_t evictions = 0;        // tensors offloaded under pressure during the step
  // Offloads the policy chose that the host pool refused (it was full): those tensors were kept.
  std::int64_t offload_refusals = 0;
  // The allocator's reserved bytes at their highest during the step, as sampled at each pack and
  // unpack, at its end and whenever it asked for room (what a budget caps; reserved bytes only
  // fall when segments are released, so the samples miss little).
  std::int64_t reserved_peak_bytes = 0;

  // The step's shape: shape_signature of its first two packs. Steps with another shape are planned
  // on their own.
  std::string signature() const;
};

// A step's shape as the auto policy keys it, from its first two packs: known at the second pack.
std::string shape_signature(const std::string& first_segment, std::int64_t first_bytes,
                            std::int64_t second_bytes);

}  // namespace actmem
