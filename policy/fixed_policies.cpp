#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>

#include "policy/auto_policy.h"
#include "policy/chain_spacing.h"
#include "policy/policy.h"

namespace actmem {
namespace {

class KeepPolicy final : public Policy {
 public:
  const char* name() const override { return "keep"; }
  Action decide(const SavedTensorInfo&) override { return Action::kKeep; }
  bool may_recompute() const override { return false; }
  bool may_offload() const override { return false; }
};

class RecomputePolicy final : public Policy {
 public:
  const char* name() const override { return "recompute"; }
  Action decide(const SavedTensorInfo& t) override {
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
  bool may_offload() const override { return false; }
};

// Recomputes every segment, and drops links as ChainSpacing says (Chen et al. 2016, with the
// run's length and the segments' bytes learned; see chain_spacing.h).
class ChainPolicy final : public Policy {
 public:
  explicit ChainPolicy(LogLevel log) : log_(log) {}
  const char* name() const override { return "chain"; }
  bool may_offload() const override { return false; }
  Action decide(const SavedTensorInfo& t) override {
    std::lock_guard<std::mutex> lock(mutex_);
    spacing_.saw(t);
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
  bool drops_input(const SegmentLink& link) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool drops = spacing_.drops(link);
    if (log_ == LogLevel::kDebug) {
      std::fprintf(stderr, "actmem chain: %s %s its input from %s (link %lld, %lld bytes)\n",
                   link.segment.c_str(), drops ? "drops" : "keeps", link.producer.c_str(),
                   static_cast<long long>(link.position), static_cast<long long>(link.bytes));
    }
    return drops;
  }

 private:
  const LogLevel log_;
  std::mutex mutex_;
  ChainSpacing spacing_;
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
  if (name == "chain") return std::make_unique<ChainPolicy>(options.log);
  if (name == "offload") return std::make_unique<OffloadPolicy>();
  if (name == "auto") {
    AutoOptions auto_options;
    auto_options.budget = options.budget;
    auto_options.offload_min_bytes = options.offload_min_bytes;
    auto_options.log = options.log;
    auto_options.host_capacity = options.host_capacity;
    auto_options.copies_overlap = options.copies_overlap;
    return std::make_unique<AutoPolicy>(std::move(auto_options));
  }
  throw std::invalid_argument("actmem: unknown policy '" + name +
                              "'; valid policies: keep, recompute, chain, offload, auto");
}

}  // namespace actmem
