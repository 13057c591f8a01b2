// The harness of the downstream programs (downstream_programs_test.cpp,
// downstream_programs_more_test.cpp): small LibTorch programs written as downstream users write
// them, each run plain (no scope: actmem's hooks return nothing and segment() only calls its
// function, which is what LibTorch does without actmem) and under every policy, and compared: the
// same digest (losses, gradients, buffers, to the bit) or the same error as plain.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <initializer_list>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hooks/actmem.h"

namespace actmem::downstream {

using Program = std::function<std::vector<torch::Tensor>()>;  // returns its digest

struct Outcome {
  std::vector<torch::Tensor> digest;
  std::string error;  // empty when the program ran to its end
};

// "every-link": recompute with every link dropped (the longest recompute chains there are; the
// chain policy drops only where it pays, which in these small programs is rarely).
inline const char* const kPolicies[] = {"keep",       "recompute", "chain",
                                        "every-link", "offload",   "auto"};

class DropEveryLink final : public Policy {
 public:
  const char* name() const override { return "every-link"; }
  Action decide(const SavedTensorInfo& t) override {
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
  bool drops_input(const SegmentLink&) override { return true; }
};

inline std::shared_ptr<Policy> policy_for(const std::string& mode) {
  if (mode == "every-link") return std::make_shared<DropEveryLink>();
  return make_device_policy(mode, 0);
}

inline std::string error_text(const std::exception& error) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) {
    return c10_error->what_without_backtrace();
  }
  return error.what();
}

// Runs `program` plain ("plain") or under a policy, with every tensor eligible for offload.
inline Outcome run(const std::string& mode, const Program& program) {
  install();
  std::unique_ptr<ActivationScope> scope;
  if (mode != "plain") {
    ScopeOptions options;
    options.offload_min_bytes = 0;
    scope = std::make_unique<ActivationScope>(policy_for(mode), options);
  }
  Outcome outcome;
  try {
    outcome.digest = program();
  } catch (const std::exception& error) {
    outcome.error = error_text(error);
  }
  return outcome;
}

// What must match between two errors: for PyTorch's in-place check, the versions it names (its
// wording about the op differs: actmem does not know which op saved the tensor); else the first
// line.
inline std::string error_kind(const std::string& error) {
  // (No std::regex: GCC 12 warns inside it at -O2, and warnings are errors.)
  const std::size_t inplace = error.find("modified by an inplace operation");
  const std::size_t at = error.find("is at version ", inplace);
  const std::size_t expected = error.find("; expected version ", at);
  if (inplace != std::string::npos && at != std::string::npos && expected != std::string::npos) {
    const std::size_t from = at + std::string("is at version ").size();
    const std::size_t wanted = expected + std::string("; expected version ").size();
    return "in-place: at version " + error.substr(from, expected - from) + ", expected " +
           error.substr(wanted, error.find_first_not_of("0123456789", wanted) - wanted);
  }
  return error.substr(0, error.find('\n'));
}

inline void expect_same(const Outcome& plain, const Outcome& outcome, const std::string& policy) {
  if (!plain.error.empty()) {
    EXPECT_EQ(error_kind(outcome.error), error_kind(plain.error))
        << policy << ": plain LibTorch's error was\n  " << plain.error << "\nactmem's is\n  "
        << outcome.error;
    return;
  }
  ASSERT_EQ(outcome.error, "") << policy;
  ASSERT_EQ(outcome.digest.size(), plain.digest.size()) << policy;
  for (std::size_t i = 0; i < plain.digest.size(); ++i) {
    EXPECT_TRUE(torch::equal(outcome.digest[i], plain.digest[i]))
        << policy << ": digest entry " << i << " differs";
  }
}

// The program, plain and under each policy: plain's digest or plain's error every time.
inline void expect_as_plain(const Program& program, bool plain_fails) {
  const Outcome plain = run("plain", program);
  ASSERT_EQ(!plain.error.empty(), plain_fails) << plain.error;
  for (const char* policy : kPolicies) expect_same(plain, run(policy, program), policy);
}

// The program under `policies` only: plain's digest or plain's error under each. For programs
// that rely on what recompute cannot reproduce (README: What recompute needs of a segment), run
// under the policies that keep or offload.
inline void expect_as_plain_under(const Program& program, bool plain_fails,
                                  std::initializer_list<const char*> policies) {
  const Outcome plain = run("plain", program);
  ASSERT_EQ(!plain.error.empty(), plain_fails) << plain.error;
  for (const char* policy : policies) expect_same(plain, run(policy, program), policy);
}

// Under `policies`, actmem's error containing `error`, where plain LibTorch runs.
inline void expect_actmem_error_under(const Program& program,
                                      std::initializer_list<const char*> policies,
                                      const std::string& error) {
  ASSERT_EQ(run("plain", program).error, "");
  for (const char* policy : policies) {
    const Outcome outcome = run(policy, program);
    EXPECT_NE(outcome.error.find(error), std::string::npos)
        << policy << ": expected actmem's error (" << error << "), got: " << outcome.error;
  }
}

// The device allocator's budget (0: none) while it lives; the one before comes back after.
class ScopedDeviceBudget {
 public:
  explicit ScopedDeviceBudget(std::int64_t budget) : previous_(device_memory().budget()) {
    device_memory().set_budget(budget > 0 ? std::optional<std::size_t>(budget) : std::nullopt);
  }
  ~ScopedDeviceBudget() { device_memory().set_budget(previous_); }
  ScopedDeviceBudget(const ScopedDeviceBudget&) = delete;
  ScopedDeviceBudget& operator=(const ScopedDeviceBudget&) = delete;

 private:
  std::optional<std::size_t> previous_;
};

}  // namespace actmem::downstream
