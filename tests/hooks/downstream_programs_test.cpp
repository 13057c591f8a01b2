// Small LibTorch programs written as downstream users write them, not for actmem: each runs plain
// (no scope: actmem's hooks return nothing and segment() only calls its function, which is what
// LibTorch does without actmem) and under every policy, and must give plain's digest (losses,
// gradients, buffers, to the bit) or plain's error. Categories: in-place changes, threads with
// random numbers, nesting, autocast, train/eval switches, views and dtypes.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <thread>
#include <vector>

#include "allocator/errors.h"
#include "hooks/actmem.h"
#include "tests/hooks/downstream_harness.h"

namespace actmem {
namespace {

namespace nn = torch::nn;
using namespace downstream;  // NOLINT: the harness is what every test here uses

std::vector<torch::Tensor> grads_of(const nn::Module& module) {
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : module.parameters()) grads.push_back(p.grad().clone());
  return grads;
}

std::vector<torch::Tensor> digest_of(const torch::Tensor& loss, const nn::Module& module) {
  std::vector<torch::Tensor> digest = {loss.detach().clone()};
  for (const torch::Tensor& g : grads_of(module)) digest.push_back(g);
  for (const torch::Tensor& b : module.buffers()) digest.push_back(b.clone());
  return digest;
}

// --- 1. A saved tensor changed in place ---

// Case A: ReLU saved its output; the caller then changes it in place.
TEST(DownstreamInPlace, ASegmentOutputChangedAfterReLUSavedIt) {
  expect_as_plain(
      [] {
        torch::manual_seed(1);
        nn::Linear linear(8, 8);
        const torch::Tensor x = torch::randn({4, 8});
        torch::Tensor out = segment(
            "relu",
            [&](const TensorList& in) -> TensorList { return {torch::relu(linear(in[0]))}; },
            {x})[0];
        out.add_(1.0);
        const torch::Tensor loss = (out * out).sum();
        loss.backward();
        return digest_of(loss, *linear);
      },
      /*plain_fails=*/true);
}

// Case B: an op inside the segment saved its input, which the caller changes after the segment.
TEST(DownstreamInPlace, ASegmentInputChangedAfterAnOpInsideSavedIt) {
  expect_as_plain(
      [] {
        torch::manual_seed(2);
        nn::Linear linear(8, 8);
        torch::Tensor hidden = linear(torch::randn({4, 8}));
        const torch::Tensor y = segment(
            "sin", [](const TensorList& in) -> TensorList { return {in[0].sin()}; }, {hidden})[0];
        hidden.mul_(2.0);
        const torch::Tensor loss = y.sum();
        loss.backward();
        return digest_of(loss, *linear);
      },
      /*plain_fails=*/true);
}

// A change in place through a view of the saved tensor.
TEST(DownstreamInPlace, AViewOfASavedTensorChangedInPlace) {
  expect_as_plain(
      [] {
        torch::manual_seed(3);
        nn::Linear linear(8, 8);
        const torch::Tensor x = torch::randn({4, 8});
        torch::Tensor out = segment(
            "exp", [&](const TensorList& in) -> TensorList { return {linear(in[0]).exp()}; },
            {x})[0];
        out.narrow(0, 0, 2).mul_(3.0);
        const torch::Tensor loss = out.sum();
        loss.backward();
        return digest_of(loss, *linear);
      },
      /*plain_fails=*/true);
}

// In-place changes that autograd allows: before anything saved the tensor, or on a tensor
// nothing saved.
TEST(DownstreamInPlace, ChangesNothingSavedAreFine) {
  expect_as_plain(
      [] {
        torch::manual_seed(4);
        nn::Linear first(8, 8), second(8, 8);
        const torch::Tensor x = torch::randn({4, 8});
        torch::Tensor out = segment("two",
                                    [&](const TensorList& in) -> TensorList {
                                      torch::Tensor h = first(in[0]);
                                      h.mul_(0.5);  // before anything saved h
                                      return {second(torch::relu(h))};
                                    },
                                    {x})[0];
        out.add_(1.0);  // the linear layer saves its input, not its output
        const torch::Tensor loss = out.pow(2).sum();
        loss.backward();
        std::vector<torch::Tensor> digest = digest_of(loss, *first);
        for (const torch::Tensor& g : grads_of(*second)) digest.push_back(g);
        return digest;
      },
      /*plain_fails=*/false);
}

// --- 2. Two threads, one drawing random numbers ---

// Thread A trains an MLP in segments and draws nothing; thread B draws from the default CPU
// generator, in and out of segments, at the same time. Each has its own scope. B's numbers and
// both threads' gradients must be those of the threads run without actmem: A's reruns must leave
// the generator B draws from alone.
struct TwoThreads {
  std::vector<torch::Tensor> a, b;
};

TwoThreads two_threads(const std::string& mode) {
  install();
  torch::manual_seed(5);
  nn::ModuleList mlp(nn::Linear(32, 64), nn::Linear(64, 64), nn::Linear(64, 1));
  nn::Linear noisy(32, 32);
  const torch::Tensor data = torch::randn({16, 32});
  torch::manual_seed(6);  // what B draws from; A draws nothing
  auto scope_for = [&]() -> std::unique_ptr<ActivationScope> {
    if (mode == "plain") return nullptr;
    ScopeOptions options;
    options.offload_min_bytes = 0;
    return std::make_unique<ActivationScope>(policy_for(mode), options);
  };
  TwoThreads result;
  std::string a_error, b_error;  // what a thread threw, reported by the test
  std::thread a([&] {
    try {
      const auto scope = scope_for();
      for (int step = 0; step < 20; ++step) {
        mlp->zero_grad();
        torch::Tensor h = data;
        for (std::size_t i = 0; i < mlp->size(); ++i) {
          h = segment("a" + std::to_string(i),
                      [&, i](const TensorList& in) -> TensorList {
                        return {mlp->at<nn::LinearImpl>(i).forward(in[0]).tanh()};
                      },
                      {h})[0];
        }
        h.sum().backward();
      }
      result.a = grads_of(*mlp);
    } catch (const std::exception& error) {
      a_error = error_text(error);
    }
  });
  std::thread b([&] {
    try {
      const auto scope = scope_for();
      std::vector<torch::Tensor> drawn;
      for (int step = 0; step < 20; ++step) {
        noisy->zero_grad();
        const torch::Tensor x = torch::randn({8, 32});
        const torch::Tensor y =
            segment("b",
                    [&](const TensorList& in) -> TensorList {
                      return {torch::dropout(noisy(in[0]), 0.5, /*train=*/true)};
                    },
                    {x})[0];
        y.pow(2).sum().backward();
        drawn.push_back(x);
        drawn.push_back(noisy->weight.grad().clone());
      }
      result.b = drawn;
    } catch (const std::exception& error) {
      b_error = error_text(error);
    }
  });
  a.join();
  b.join();
  EXPECT_EQ(a_error, "") << mode << ": thread A";
  EXPECT_EQ(b_error, "") << mode << ": thread B";
  return result;
}

TEST(DownstreamThreads, ASecondThreadsRandomNumbersAreItsOwnUnderEveryPolicy) {
  const TwoThreads plain = two_threads("plain");
  for (const char* policy : kPolicies) {
    for (int attempt = 0; attempt < 5; ++attempt) {  // the threads interleave differently
      const TwoThreads run = two_threads(policy);
      ASSERT_EQ(run.b.size(), plain.b.size());
      for (std::size_t i = 0; i < plain.b.size(); ++i) {
        ASSERT_TRUE(torch::equal(run.b[i], plain.b[i]))
            << policy << ", attempt " << attempt << ": thread B's draw or gradient " << i;
      }
      for (std::size_t i = 0; i < plain.a.size(); ++i) {
        ASSERT_TRUE(torch::equal(run.a[i], plain.a[i])) << policy << ": thread A's gradient";
      }
    }
  }
}

// --- 3. Nested segments that name their modules ---

struct BatchNormBlock : nn::Module {
  nn::Linear linear{nullptr};
  nn::BatchNorm1d norm{nullptr};
  BatchNormBlock() {
    linear = register_module("linear", nn::Linear(16, 16));
    norm = register_module("norm", nn::BatchNorm1d(16));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::relu(norm(linear(x))); }
};

// Programs where one segment's output is the next one's input (a link: "every-link" drops each,
// so the rerun of the later segment reruns the earlier one first).

// The link changed in place after the segment that took it ran: sin saved it, so plain LibTorch
// fails at backward, and so must every policy, chains included.
TEST(DownstreamChains, ALinkChangedInPlaceAfterTheNextSegmentRan) {
  expect_as_plain(
      [] {
        torch::manual_seed(21);
        nn::Linear linear(8, 8);
        torch::Tensor a =
            segment("a", [&](const TensorList& in) -> TensorList { return {linear(in[0]).tanh()}; },
                    {torch::randn({4, 8})})[0];
        const torch::Tensor b =
            segment("b", [](const TensorList& in) -> TensorList { return {in[0].sin()}; }, {a})[0];
        a.mul_(2.0);
        const torch::Tensor loss = b.sum();
        loss.backward();
        return digest_of(loss, *linear);
      },
      /*plain_fails=*/true);
}

// The producer returns two outputs: the next segment takes one, the loss the other; and the
// first output also feeds a residual sum outside the segments.
TEST(DownstreamChains, SeveralOutputsAndAResidualAroundTheLink) {
  expect_as_plain(
      [] {
        torch::manual_seed(22);
        nn::Sequential net(nn::Linear(16, 16), nn::BatchNorm1d(16), nn::Dropout(0.2),
                           nn::Linear(16, 16));
        const torch::Tensor x = torch::randn({32, 16});
        const TensorList first = segment(
            "first",
            [&](const TensorList& in) -> TensorList {
              const torch::Tensor h =
                  net[1]->as<nn::BatchNorm1d>()->forward(net[0]->as<nn::Linear>()->forward(in[0]));
              return {net[2]->as<nn::Dropout>()->forward(h.relu()), h.exp().mean(0)};
            },
            {x}, net.ptr().get());
        const torch::Tensor second = segment(
            "second",
            [&](const TensorList& in) -> TensorList {
              return {net[3]->as<nn::Linear>()->forward(in[0]).sigmoid()};
            },
            {first[0]}, net.ptr().get())[0];
        const torch::Tensor third = segment(
            "third", [](const TensorList& in) -> TensorList { return {(in[0] * in[0]).cos()}; },
            {second})[0];
        const torch::Tensor loss = (third + first[0]).pow(2).mean() + first[1].sum();
        loss.backward();
        return digest_of(loss, *net);
      },
      /*plain_fails=*/false);
}

TEST(DownstreamNesting, InnerSegmentsModulesAreRestoredWithTheOuterOne) {
  expect_as_plain(
      [] {
        torch::manual_seed(7);
        auto first = std::make_shared<BatchNormBlock>();
        auto second = std::make_shared<BatchNormBlock>();
        nn::Sequential both;
        both->push_back(first);
        both->push_back(second);
        const torch::Tensor x = torch::randn({8, 16});
        torch::Tensor loss;
        for (int step = 0; step < 2; ++step) {
          both->zero_grad();
          const torch::Tensor y = segment(
              "outer",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor a = segment(
                    "inner0", *first, [&](const torch::Tensor& t) { return first->forward(t); },
                    in[0]);
                return {segment(
                    "inner1", *second, [&](const torch::Tensor& t) { return second->forward(t); },
                    a)};
              },
              {x}, /*module=*/nullptr)[0];
          loss = y.pow(2).mean();
          loss.backward();
        }
        return digest_of(loss, *both);  // the buffers: BatchNorm's running stats
      },
      /*plain_fails=*/false);
}

// --- 4. Autocast ---

struct ConvNet : nn::Module {
  nn::Conv2d conv1{nullptr}, conv2{nullptr};
  nn::BatchNorm2d norm{nullptr};
  ConvNet() {
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)));
    norm = register_module("norm", nn::BatchNorm2d(8));
    conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1)));
  }
};

// The usual mixed-precision pattern: forward under autocast, backward after it ends.
TEST(DownstreamAutocast, ASegmentRerunsUnderTheAutocastOfItsForward) {
  expect_as_plain(
      [] {
        torch::manual_seed(8);
        auto net = std::make_shared<ConvNet>();
        const torch::Tensor x = torch::randn({4, 3, 16, 16});
        at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
        at::autocast::set_autocast_enabled(at::kCPU, true);
        torch::Tensor y;
        try {
          y = segment(
              "conv",
              [&](const TensorList& in) -> TensorList {
                return {net->conv2(torch::relu(net->norm(net->conv1(in[0]))))};
              },
              {x}, net.get())[0];
        } catch (...) {
          at::autocast::set_autocast_enabled(at::kCPU, false);
          throw;
        }
        at::autocast::set_autocast_enabled(at::kCPU, false);
        at::autocast::clear_cache();
        EXPECT_EQ(y.scalar_type(), at::kBFloat16);
        const torch::Tensor loss = y.to(torch::kFloat).pow(2).mean();
        loss.backward();
        return digest_of(loss, *net);
      },
      /*plain_fails=*/false);
}

// --- 5. eval() between forward and backward ---

TEST(DownstreamTrainEval, EvalBetweenForwardAndBackwardWithBatchNorm) {
  expect_as_plain(
      [] {
        torch::manual_seed(9);
        auto block = std::make_shared<BatchNormBlock>();
        block->train();
        const torch::Tensor x = torch::randn({8, 16});
        const torch::Tensor y = segment(
            "block", *block, [&](const torch::Tensor& t) { return block->forward(t); }, x);
        block->eval();  // e.g. a validation pass's set-up, before this step's backward
        const torch::Tensor loss = y.pow(2).mean();
        loss.backward();
        EXPECT_FALSE(block->is_training()) << "the rerun gives the caller's flag back";
        return digest_of(loss, *block);
      },
      /*plain_fails=*/false);
}

TEST(DownstreamTrainEval, EvalBetweenForwardAndBackwardWithDropout) {
  expect_as_plain(
      [] {
        torch::manual_seed(10);
        nn::Sequential net(nn::Linear(16, 16), nn::Dropout(0.3), nn::Linear(16, 4));
        net->train();
        const torch::Tensor x = torch::randn({8, 16});
        const torch::Tensor y = segment(
            "net", *net, [&](const torch::Tensor& t) { return net->forward(t); }, x);
        net->eval();
        const torch::Tensor loss = y.pow(2).mean();
        loss.backward();
        return digest_of(loss, *net);
      },
      /*plain_fails=*/false);
}

// --- 6. auto under a budget near keep's: its advice is a lower bound, and following it works ---

// Three training steps of an MLP in segments under `policy` and `budget` (0: none), from an empty
// cache; returns the reserved peak, or rethrows the step's error.
std::int64_t mlp_steps(const std::string& policy, std::int64_t budget) {
  install();
  device_memory().empty_cache();
  torch::manual_seed(12);
  nn::ModuleList layers(nn::Linear(256, 512), nn::Linear(512, 512), nn::Linear(512, 512),
                        nn::Linear(512, 256));
  torch::optim::SGD optimizer(layers->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const torch::Tensor x = torch::randn({256, 256});
  const ScopedDeviceBudget scoped_budget(budget);
  ActivationScope scope(make_device_policy(policy));
  device_memory().reset_peak_stats();
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    torch::Tensor h = x;
    for (std::size_t i = 0; i < layers->size(); ++i) {
      h = segment("layer" + std::to_string(i),
                  [&, i](const TensorList& in) -> TensorList {
                    return {torch::relu(layers->at<nn::LinearImpl>(i).forward(in[0]))};
                  },
                  {h})[0];
    }
    h.pow(2).mean().backward();
    optimizer.step();
  }
  return device_memory().stats().reserved_bytes.peak;
}

TEST(DownstreamAutoBudget, FollowingTheAdviceOfATooSmallBudgetReachesOneThatFits) {
  const std::int64_t keep = mlp_steps("keep", 0);
  std::int64_t budget = keep * 6 / 10;
  bool fitted = false;
  for (int attempt = 0; attempt < 12 && !fitted; ++attempt) {
    try {
      EXPECT_LE(mlp_steps("auto", budget), budget);
      fitted = true;
    } catch (const OutOfMemoryError& error) {
      const std::string message = error.what();
      if (dynamic_cast<const BudgetTooSmallError*>(&error) != nullptr) {
        EXPECT_NE(message.find("That is a lower bound"), std::string::npos) << message;
      }
      const auto least = static_cast<std::int64_t>(error.least_budget_bytes());
      ASSERT_GT(least, budget) << "the advice moves forward\n" << message;
      EXPECT_LE(least, keep) << "a lower bound: keep's reserved bytes fit\n" << message;
      std::printf("refused at %lld, advice %lld (keep %lld)\n", (long long)budget, (long long)least,
                  (long long)keep);
      budget = least;
    }
  }
  EXPECT_TRUE(fitted) << "still refused at " << budget << " bytes; keep reserved " << keep;
  EXPECT_LE(budget, keep);
}

// --- views and dtypes ---

TEST(DownstreamDtypes, DoublePrecisionAndIntegerIndices) {
  expect_as_plain(
      [] {
        torch::manual_seed(11);
        nn::Embedding embedding(50, 12);
        nn::Linear linear(12, 3);
        embedding->to(torch::kDouble);
        linear->to(torch::kDouble);
        const torch::Tensor words = torch::randint(50, {6, 5}, torch::kLong);
        const torch::Tensor y = segment("embed",
                                        [&](const TensorList& in) -> TensorList {
                                          return {linear(embedding(in[0]).tanh()).transpose(0, 1)};
                                        },
                                        {words})[0];
        const torch::Tensor loss = y.select(0, 1).pow(3).sum();  // a view of a view
        loss.backward();
        std::vector<torch::Tensor> digest = digest_of(loss, *embedding);
        for (const torch::Tensor& g : grads_of(*linear)) digest.push_back(g);
        return digest;
      },
      /*plain_fails=*/false);
}

// --- buffers a forward reads ---

// A buffer read and then updated in place by the forward, as spectral norm's power iteration
// does: a rerun must start from the value the forward read.
struct RunningScaleImpl : nn::Module {
  torch::Tensor scale;
  RunningScaleImpl() { scale = register_buffer("scale", torch::ones({16})); }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor y = x * scale.clone();  // (the product would save the buffer itself)
    torch::NoGradGuard no_grad;
    scale.mul_(1.5);
    return y;
  }
};
TORCH_MODULE(RunningScale);

// A BatchNorm whose forward also reads its running mean, which its own forward has just updated.
struct MeanShiftedBatchNormImpl : nn::BatchNorm1dImpl {
  MeanShiftedBatchNormImpl() : nn::BatchNorm1dImpl(16) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return nn::BatchNorm1dImpl::forward(x) + running_mean;
  }
};
TORCH_MODULE(MeanShiftedBatchNorm);

TEST(DownstreamBuffers, ModulesThatReadTheBuffersTheirForwardUpdates) {
  expect_as_plain(
      [] {
        torch::manual_seed(31);
        nn::Linear linear(16, 16);
        RunningScale scale;
        MeanShiftedBatchNorm shifted;
        nn::BatchNorm1d norm(16);
        nn::Sequential net(linear, scale, shifted, norm);
        const torch::Tensor x = torch::randn({8, 16});
        const std::vector<std::function<torch::Tensor(const torch::Tensor&)>> layers = {
            [&](const torch::Tensor& t) { return linear(t).tanh(); },
            [&](const torch::Tensor& t) { return scale(t).sin(); },
            [&](const torch::Tensor& t) { return shifted(t).cos(); },
            [&](const torch::Tensor& t) { return norm(t).pow(2); }};
        torch::Tensor loss;
        for (int step = 0; step < 2; ++step) {
          net->zero_grad();
          torch::Tensor h = x;
          for (std::size_t i = 0; i < layers.size(); ++i) {
            h = segment("s" + std::to_string(i),
                        [&layers, i](const TensorList& in) -> TensorList {
                          return {layers[i](in[0])};
                        },
                        {h}, net.ptr().get())[0];
          }
          loss = h.mean();
          loss.backward();
        }
        return digest_of(loss, *net);  // the buffers too
      },
      /*plain_fails=*/false);
}

// LibTorch's own BatchNorm, in training mode, whose running variance the segment's code reads after
// the BatchNorm updated it: the rerun must start from the running statistics the forward started
// from, although the BatchNorm's output does not depend on them (a copy of them at the segment's
// start cannot be left out for BatchNorm: found by a review, 2026-12-01).
TEST(DownstreamBuffers, ASegmentThatReadsATrainingBatchNormsRunningStatistics) {
  expect_as_plain(
      [] {
        torch::manual_seed(32);
        nn::BatchNorm1d norm(16);
        nn::Linear linear(16, 16);
        const torch::Tensor x = torch::randn({8, 16});
        torch::Tensor loss;
        for (int step = 0; step < 2; ++step) {
          norm->zero_grad();
          linear->zero_grad();
          const torch::Tensor h =
              segment("norm",
                      [&](const TensorList& in) -> TensorList {
                        const torch::Tensor y = norm(linear(in[0]));
                        return {(y * norm->running_var.clone()).sin()};
                      },
                      {x}, norm.ptr().get())[0];
          loss = h.pow(2).mean();
          loss.backward();
        }
        std::vector<torch::Tensor> digest = digest_of(loss, *norm);
        for (const torch::Tensor& g : grads_of(*linear)) digest.push_back(g);
        return digest;
      },
      /*plain_fails=*/false);
}

}  // namespace
}  // namespace actmem
