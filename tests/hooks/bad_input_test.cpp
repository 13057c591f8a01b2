// Misuse gets a clear error and leaves actmem usable; nothing is lost.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdexcept>

#include "hooks/actmem.h"

namespace actmem {
namespace {

std::string message_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "";
}

TEST(HooksBadInput, InstallTwiceIsHarmless) {
  install();
  install();
  EXPECT_TRUE(installed());
}

TEST(HooksBadInput, APolicyTypoListsTheValidNames) {
  EXPECT_NE(
      message_of([] {
        make_policy("recompte");
      }).find("unknown policy 'recompte'; valid policies: keep, recompute, chain, offload, auto"),
      std::string::npos);
  const auto env = [](const char* name) -> const char* {
    return std::string(name) == "ACTMEM_POLICY" ? "fast" : nullptr;
  };
  EXPECT_NE(message_of([&] { PolicyConfig::from_environment(env); }).find("ACTMEM_POLICY='fast'"),
            std::string::npos);
}

TEST(HooksBadInput, ASegmentThatThrowsLeavesNothingActive) {
  install();
  ActivationScope scope(make_policy("recompute"));
  torch::Tensor x = torch::randn({4, 4}, torch::requires_grad());
  EXPECT_EQ(
      message_of([&] {
        segment("boom",
                [](const TensorList&) -> TensorList { throw std::runtime_error("segment failed"); },
                {x});
      }),
      "segment failed");
  // The next segment is a segment of its own, not part of the failed one, and works.
  auto y =
      segment("fine", [](const TensorList& in) -> TensorList { return {(in[0] * 2).sin()}; }, {x});
  y[0].sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), 2 * (x.detach() * 2).cos()));
  EXPECT_EQ(scope.stats().recomputations, 1);
}

TEST(HooksBadInput, BackwardAfterTheGraphWasFreedIsAnError) {
  install();
  ActivationScope scope(make_policy("recompute"));
  torch::Tensor x = torch::randn({8}, torch::requires_grad());
  auto y = segment("s", [](const TensorList& in) -> TensorList { return {in[0].exp()}; }, {x});
  torch::Tensor loss = y[0].sum();
  loss.backward();
  const std::string error = message_of([&] { loss.backward(); });
  EXPECT_NE(error.find("backward through the graph a second time"), std::string::npos) << error;
}

TEST(HooksBadInput, RetainGraphRecomputesForTheSecondBackward) {
  install();
  ActivationScope scope(make_policy("recompute"));
  torch::Tensor x = torch::randn({8}, torch::requires_grad());
  auto y = segment("s", [](const TensorList& in) -> TensorList { return {in[0].exp()}; }, {x});
  torch::Tensor loss = y[0].sum();
  loss.backward({}, /*retain_graph=*/true);
  const torch::Tensor first = x.grad().clone();
  loss.backward();
  EXPECT_TRUE(torch::equal(x.grad(), first * 2));
  EXPECT_EQ(scope.stats().recomputations, 2);
}

TEST(HooksBadInput, AnInputChangedInPlaceCannotBeRecomputed) {
  install();
  ActivationScope scope(make_policy("recompute"));
  torch::Tensor w = torch::randn({8}, torch::requires_grad());
  torch::Tensor x = w * 2;  // not a leaf: its data can change under the segment
  auto y = segment("s", [](const TensorList& in) -> TensorList { return {in[0].exp()}; }, {x});
  {
    torch::NoGradGuard no_grad;
    x.add_(1);
  }
  const std::string error = message_of([&] { y[0].sum().backward(); });
  EXPECT_NE(error.find("modified in place after the segment ran"), std::string::npos) << error;
}

TEST(HooksBadInput, ANonDeterministicSegmentIsNamedWhenItsRerunDiffers) {
  install();
  ActivationScope scope(make_policy("recompute"));
  torch::Tensor x = torch::randn({8}, torch::requires_grad());
  int calls = 0;
  auto y = segment("flaky",
                   [&](const TensorList& in) -> TensorList {
                     // The rerun skips the second op: it saves fewer tensors.
                     torch::Tensor t = in[0].exp();
                     return {++calls == 1 ? t.exp() : t};
                   },
                   {x});
  const std::string error = message_of([&] { y[0].sum().backward(); });
  EXPECT_NE(error.find("segment 'flaky'"), std::string::npos) << error;
}

TEST(HooksBadInput, AFullHostPoolKeepsTheTensorInstead) {
  install();
  ScopeOptions options;
  options.offload_min_bytes = 1;
  options.host_capacity = 1;  // nothing fits
  ActivationScope scope(make_policy("offload"), options);
  torch::Tensor x = torch::randn({1024}, torch::requires_grad());
  torch::Tensor y = (x * 3).exp().sum();
  y.backward();
  EXPECT_TRUE(torch::allclose(x.grad(), 3 * (x.detach() * 3).exp()));
  EXPECT_GT(scope.stats().offload_fallbacks, 0);
  EXPECT_EQ(scope.stats().tensors_offloaded, 0);
}

TEST(HooksBadInput, TheEnvironmentChoosesThePolicy) {
  install();
  setenv("ACTMEM_POLICY", "offload", 1);
  setenv("ACTMEM_OFFLOAD_MIN_BYTES", "1KiB", 1);
  auto scope = ActivationScope::from_environment();
  torch::Tensor x = torch::randn({1024}, torch::requires_grad());
  (x * 3).exp().sum().backward();
  EXPECT_EQ(scope->stats().tensors_offloaded, 1);  // exp's 4 KiB result; x * 3 saves no tensor
  setenv("ACTMEM_OFFLOAD_MIN_BYTES", "a lot", 1);
  EXPECT_NE(message_of([] {
              ActivationScope::from_environment();
            }).find("ACTMEM_OFFLOAD_MIN_BYTES='a lot' is invalid"),
            std::string::npos);
  unsetenv("ACTMEM_POLICY");
  unsetenv("ACTMEM_OFFLOAD_MIN_BYTES");
}

// ACTMEM_HOST_BUDGET=0 turns offload off (an offload decision keeps the tensor and counts it);
// a negative or malformed value stops the scope, naming the variable. Likewise the window.
TEST(HooksBadInput, AHostBudgetOfZeroTurnsOffloadOff) {
  install();
  setenv("ACTMEM_POLICY", "offload", 1);
  setenv("ACTMEM_OFFLOAD_MIN_BYTES", "1KiB", 1);
  setenv("ACTMEM_HOST_BUDGET", "0", 1);
  setenv("ACTMEM_PREFETCH_WINDOW", "0 MiB", 1);
  {
    auto scope = ActivationScope::from_environment();
    torch::Tensor x = torch::randn({1024}, torch::requires_grad());
    (x * 3).exp().sum().backward();
    EXPECT_EQ(scope->stats().tensors_offloaded, 0);
    EXPECT_EQ(scope->stats().offload_fallbacks, 1);
  }
  for (const char* bad : {"-1", "zero", "0 apples"}) {
    setenv("ACTMEM_HOST_BUDGET", bad, 1);
    EXPECT_NE(message_of([] {
                ActivationScope::from_environment();
              }).find(std::string("ACTMEM_HOST_BUDGET='") + bad + "' is invalid: expected 0 or"),
              std::string::npos)
        << bad;
  }
  unsetenv("ACTMEM_POLICY");
  unsetenv("ACTMEM_OFFLOAD_MIN_BYTES");
  unsetenv("ACTMEM_HOST_BUDGET");
  unsetenv("ACTMEM_PREFETCH_WINDOW");
}

TEST(HooksBadInput, OutsideAScopeNothingIsManaged) {
  install();
  torch::Tensor x = torch::randn({8}, torch::requires_grad());
  auto y = segment("s", [](const TensorList& in) -> TensorList { return {in[0].exp()}; }, {x});
  y[0].sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x.detach().exp()));
}

}  // namespace
}  // namespace actmem
