// Which links of a run of segments to drop for recompute chains (policy.h's SegmentLink), from what
// the steps have shown: Chen et al.'s spacing, with the run's length and the segments' bytes
// learned. Used by the chain policy, and by auto while it profiles under a budget it cannot reach
// by offloading. Not thread-safe: its users lock.
//
// A run of n links where each segment saves c times its input's bytes holds about
// (n/k)·input + k·c·input when every k-th input is kept, least at k = √(n/c). Once a whole step
// has been seen, uniform spacing at that k. Before (the first step, n and c unknown), no link is
// dropped: the step is per-segment recompute. A rule that drops links while n is unknown (spacing
// that grows with the position, about 2√(n·c) inputs for any n) drops the run's last links most
// densely, and backward begins there, at the step's peak, where a chain's rerun brings a second
// segment's tensors back on top of every kept input: measured, such a first step held more than
// recompute's (the deep test stack: 42.0 MiB against 40.0; ResNet-56 under the vmm layout: a
// least budget of 117 MiB against 111). Where k comes out at 1 (short runs, or segments that
// save far more than their input), every input is kept: per-segment recompute.
#pragma once

#include <cstdint>
#include <string>

#include "policy/policy.h"

namespace actmem {

class ChainSpacing {
 public:
  // A saved tensor of the step (its bytes count for its segment), in pack order; order 0 starts a
  // step, and the step before it becomes what uniform spacing learns from.
  void saw(const SavedTensorInfo& tensor);
  // Whether to drop `link`. A segment's links (several inputs from the segment before it) get one
  // answer: the first one's.
  bool drops(const SegmentLink& link);
  // The uniform k learned from the last whole step; 0 before one was seen.
  std::int64_t learned_k() const { return learned_k_; }

 private:
  struct Seen {
    std::int64_t segments = 0, saved_bytes = 0;  // segments that saved tensors, and what
    std::int64_t links = 0, input_bytes = 0;     // links, and their inputs' bytes
    std::int64_t longest_run = 0;                // segments in the longest run of links
    // Saved bytes per segment over input bytes per link; 0 when not known yet.
    double ratio() const;
    std::int64_t uniform_k() const;
  };

  bool decide(std::int64_t position) const;  // for a segment's first link

  Seen seeing_;  // the step in progress
  std::int64_t learned_k_ = 0;
  std::string last_segment_;  // the segment of the last tensor seen
  // The last link answered, and the answer: the segment's other links get the same.
  std::string last_link_segment_;
  std::int64_t last_link_position_ = -1;
  bool last_answer_ = false;
};

}  // namespace actmem
