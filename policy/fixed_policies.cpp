#include <stdexcept>

#include "policy/policy.h"

namespace actmem {
namespace {

class KeepPolicy final : public Policy {
 public:
  const char* name() const override { return "keep"; }
  Action decide(const SavedTensorInfo&) override { return Action::kKeep; }
};

class RecomputePolicy final : public Policy {
 public:
  const char* name() const override { return "recompute"; }
  Action decide(const SavedTensorInfo& t) override {
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
};

class OffloadPolicy final : public Policy {
 public:
  const char* name() const override { return "offload"; }
  Action decide(const SavedTensorInfo&) override { return Action::kOffload; }
};

}  // namespace

const char* to_string(Action action) {
  switch (action) {
    case Action::kKeep: return "keep";
    case Action::kOffload: return "offload";
    case Action::kRecompute: return "recompute";
  }
  return "?";
}

std::unique_ptr<Policy> make_policy(const std::string& name) {
  if (name == "keep") return std::make_unique<KeepPolicy>();
  if (name == "recompute") return std::make_unique<RecomputePolicy>();
  if (name == "offload") return std::make_unique<OffloadPolicy>();
  if (name == "auto") {
    throw std::invalid_argument(
        "actmem: policy 'auto' is not available yet (it arrives with the auto-policy issue); "
        "valid policies: keep, recompute, offload");
  }
  throw std::invalid_argument("actmem: unknown policy '" + name +
                              "'; valid policies: keep, recompute, offload");
}

}  // namespace actmem
