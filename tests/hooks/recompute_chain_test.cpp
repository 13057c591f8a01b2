// Recompute chains (policy.h's SegmentLink): a segment that drops its input rebuilds it in
// backward by rerunning the segment before it. Here under a policy that drops every link, the
// longest chain there is: the first segment's input is the only one held, and the first rerun in
// backward brings the whole stack back. It must still train to keep's bits (dropout's masks,
// BatchNorm's running stats) and rerun each segment once per backward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "hooks/actmem.h"
#include "tests/support/training_record.h"

namespace actmem {
namespace {

namespace nn = torch::nn;

// Recomputes every segment and drops every link: one chain from the first segment to the last.
class DropEveryLink final : public Policy {
 public:
  const char* name() const override { return "drop-every-link"; }
  Action decide(const SavedTensorInfo& t) override {
    return t.segment.empty() ? Action::kKeep : Action::kRecompute;
  }
  bool drops_input(const SegmentLink& link) override {
    links.push_back(link);
    return true;
  }
  std::vector<SegmentLink> links;
};

constexpr int kBlocks = 12;
constexpr std::int64_t kBatch = 64, kWidth = 256;  // 64 KiB activations

// Linear, BatchNorm, tanh and dropout per block, each block a segment returning its output to the
// next: a run of kBlocks - 1 links.
struct Stack : nn::Module {
  Stack() {
    torch::manual_seed(5);
    for (int i = 0; i < kBlocks; ++i) {
      blocks.push_back(
          register_module("block" + std::to_string(i),
                          nn::Sequential(nn::Linear(kWidth, kWidth), nn::BatchNorm1d(kWidth),
                                         nn::Functional(torch::tanh), nn::Dropout(0.1))));
    }
    input = torch::randn({kBatch, kWidth});
  }
  torch::Tensor forward() {
    torch::Tensor x = input;
    for (int i = 0; i < kBlocks; ++i) {
      x = segment(
          "block" + std::to_string(i), *blocks[i],
          [this, i](const torch::Tensor& in) { return blocks[i]->forward(in); }, x);
    }
    return x.pow(2).mean();
  }
  std::vector<nn::Sequential> blocks;
  torch::Tensor input;
};

struct Trained {
  std::vector<double> losses;
  std::vector<torch::Tensor> grads, buffers;
  ActivationStats stats;
  std::int64_t held_after_forward = 0;  // device bytes the last forward left allocated
};

// Two SGD steps under `policy` (none: plain LibTorch).
Trained train(const std::shared_ptr<Policy>& policy) {
  install();
  Stack stack;
  stack.train();
  torch::optim::SGD optimizer(stack.parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  std::unique_ptr<ActivationScope> scope;
  if (policy) scope = std::make_unique<ActivationScope>(policy);
  torch::manual_seed(99);
  Trained trained;
  for (int step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    const std::int64_t before = device_memory().stats().allocated_bytes.current;
    torch::Tensor loss = stack.forward();
    trained.held_after_forward = device_memory().stats().allocated_bytes.current - before;
    loss.backward();
    optimizer.step();
    trained.losses.push_back(loss.item<double>());
  }
  for (const auto& p : stack.parameters()) trained.grads.push_back(p.grad().clone());
  for (const auto& b : stack.buffers()) trained.buffers.push_back(b.clone());
  if (scope) trained.stats = scope->stats();
  return trained;
}

TEST(RecomputeChain, OneChainThroughTheStackTrainsLikeKeepAndRerunsEachSegmentOnce) {
  const Trained keep = train(make_policy("keep"));
  const auto policy = std::make_shared<DropEveryLink>();
  const Trained chain = train(policy);
  EXPECT_EQ(chain.losses, keep.losses);
  testing::expect_same_bits(chain.grads, keep.grads, "gradients");
  testing::expect_same_bits(chain.buffers, keep.buffers, "BatchNorm's running stats");
  EXPECT_EQ(chain.stats.recomputations, 2 * kBlocks) << "each segment once per backward";
  EXPECT_EQ(chain.stats.unpacked, chain.stats.packed);
  ASSERT_EQ(policy->links.size(), 2u * (kBlocks - 1)) << "every block but the first is a link";
  EXPECT_EQ(policy->links[0].segment, "block1");
  EXPECT_EQ(policy->links[0].producer, "block0");
  EXPECT_EQ(policy->links[kBlocks - 2].position, kBlocks - 1);
  EXPECT_EQ(policy->links[0].bytes, kBatch * kWidth * 4);
}

// After the forward, recompute holds every block's input; the chain holds only the first (the
// batch, which the module holds anyway): kBlocks - 1 activations fewer.
TEST(RecomputeChain, TheForwardHoldsOnlyTheInputsTheChainKeeps) {
  const Trained recompute = train(make_policy("recompute"));
  const Trained chain = train(std::make_shared<DropEveryLink>());
  const std::int64_t activation = kBatch * kWidth * 4;
  EXPECT_LE(chain.held_after_forward, recompute.held_after_forward - (kBlocks - 1) * activation)
      << "recompute " << recompute.held_after_forward << " B, chain " << chain.held_after_forward
      << " B";
}

// retain_graph: a second backward reruns the chain again and accumulates the same gradients.
TEST(RecomputeChain, ASecondBackwardRerunsTheChainAgain) {
  install();
  auto run = [](const std::shared_ptr<Policy>& policy) {
    Stack stack;
    stack.train();
    std::unique_ptr<ActivationScope> scope;
    if (policy) scope = std::make_unique<ActivationScope>(policy);
    torch::manual_seed(3);
    torch::Tensor loss = stack.forward();
    loss.backward({}, /*retain_graph=*/true);
    loss.backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : stack.parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(grads, scope ? scope->stats().recomputations : 0);
  };
  const auto keep = run(nullptr);
  const auto chain = run(std::make_shared<DropEveryLink>());
  testing::expect_same_bits(chain.first, keep.first, "gradients of two backwards");
  EXPECT_EQ(chain.second, 2 * kBlocks);
}

// A first backward takes only part of a segment's tensors (a loss over one of its two outputs); the
// second takes one the first took already: the rerun it starts must produce it again.
TEST(RecomputeChain, ASecondBackwardMayWantWhatTheFirstTookAlready) {
  install();
  auto run = [](const std::shared_ptr<Policy>& policy) {
    std::unique_ptr<ActivationScope> scope;
    if (policy) scope = std::make_unique<ActivationScope>(policy);
    const torch::Tensor x = torch::linspace(-1, 1, 64).requires_grad_(true);
    const TensorList out = segment("two",
                                   [](const TensorList& in) -> TensorList {
                                     return {in[0].exp(), in[0].sin()};
                                   },
                                   {x});
    const torch::Tensor first = out[0].sum();
    first.backward({}, /*retain_graph=*/true);  // takes exp's result; sin's input stays
    (out[0] * 2 + out[1]).sum().backward();     // exp's again, and sin's
    return x.grad().clone();
  };
  const torch::Tensor plain = run(nullptr);
  EXPECT_TRUE(torch::equal(run(make_policy("recompute")), plain));
  EXPECT_TRUE(torch::equal(run(std::make_shared<DropEveryLink>()), plain));
}

}  // namespace
}  // namespace actmem
