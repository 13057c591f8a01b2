#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "policy/auto_policy.h"
#include "policy/policy.h"

namespace actmem {
namespace {

class KeepPolicy final : public Policy {
 public:
  const char* name() const override { return "keep"; }
  Action decide(const SavedTensorInfo&) override { return Action::kKeep; }
  bool may_recompute() const override { return false; }
};

class RecomputePolicy final : public Policy {
 public:
  const char* name() const override { return "recompute"; }
  Action decide(const SavedTensorInfo& t) override {
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
};

// Chen et al. 2016, "Training deep nets with sublinear memory cost": of each run of n linked
// segments, keep the input of every k-th and recompute the others from there. The kept inputs are
// n/k, and a rerun brings back up to k segments' saved tensors at once, so the step holds about
// (n/k)·input + k·saved bytes, least at k = √(n·input/saved): with saved bytes c times the input,
// k = √(n/c) (Chen's √n is the c = 1 case). n, the input's bytes and the saved bytes per segment
// are learned in the first step, which keeps every input (as recompute does); each step after it
// uses what the step before it saw. k = 1 (runs too short for a chain to pay) keeps every input.
class ChainPolicy final : public Policy {
 public:
  const char* name() const override { return "chain"; }

  Action decide(const SavedTensorInfo& t) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (t.order == 0 && seeing_.segments > 0) {  // a new step: learn from the last one
      k_ = seeing_.best_k();
      seeing_ = {};
    }
    if (t.segment.empty()) return Action::kKeep;
    if (t.segment != last_segment_) ++seeing_.segments;
    last_segment_ = t.segment;
    if (!t.is_leaf) seeing_.saved_bytes += t.bytes;
    return Action::kRecompute;
  }

  bool drops_input(const SegmentLink& link) override {
    std::lock_guard<std::mutex> lock(mutex_);
    ++seeing_.links;
    seeing_.input_bytes += link.bytes;
    seeing_.longest_run = std::max(seeing_.longest_run, link.position + 1);
    return k_ > 1 && link.position % k_ != 0;
  }

 private:
  struct Seen {
    std::int64_t segments = 0, saved_bytes = 0;  // segments begun, and what they saved
    std::int64_t links = 0, input_bytes = 0;     // links, and their inputs' bytes
    std::int64_t longest_run = 0;                // segments in the longest run of links
    std::int64_t best_k() const {
      if (links == 0 || segments == 0 || saved_bytes == 0) return 1;
      const double input = static_cast<double>(input_bytes) / static_cast<double>(links);
      const double saved = static_cast<double>(saved_bytes) / static_cast<double>(segments);
      const double k = std::sqrt(static_cast<double>(longest_run) * input / saved);
      return std::clamp<std::int64_t>(std::llround(k), 1, longest_run);
    }
  };

  std::mutex mutex_;
  Seen seeing_;               // the step in progress
  std::int64_t k_ = 1;        // from the step before it
  std::string last_segment_;  // the segment of the last tensor decided
};

class OffloadPolicy final : public Policy {
 public:
  const char* name() const override { return "offload"; }
  Action decide(const SavedTensorInfo&) override { return Action::kOffload; }
  bool may_recompute() const override { return false; }
};

}  // namespace

const char* to_string(Action action) {
  switch (action) {
    case Action::kKeep:
      return "keep";
    case Action::kOffload:
      return "offload";
    case Action::kRecompute:
      return "recompute";
  }
  return "?";
}

std::unique_ptr<Policy> make_policy(const std::string& name, const PolicyOptions& options) {
  if (name == "keep") return std::make_unique<KeepPolicy>();
  if (name == "recompute") return std::make_unique<RecomputePolicy>();
  if (name == "chain") return std::make_unique<ChainPolicy>();
  if (name == "offload") return std::make_unique<OffloadPolicy>();
  if (name == "auto") {
    AutoOptions auto_options;
    auto_options.budget = options.budget;
    auto_options.offload_min_bytes = options.offload_min_bytes;
    auto_options.log = options.log;
    return std::make_unique<AutoPolicy>(std::move(auto_options));
  }
  throw std::invalid_argument("actmem: unknown policy '" + name +
                              "'; valid policies: keep, recompute, chain, offload, auto");
}

}  // namespace actmem
