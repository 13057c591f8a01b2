// The reference models on a CUDA device (where one answers; else every test skips, saying so):
// actmem is LibTorch's CUDA allocator, and recompute, chain and offload train each model at `tiny`
// size to the same bits as keep (deterministic cuDNN), in fewer device bytes, with the offload
// pipeline's copies going through the CUDA copy engine.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <string>

#ifdef ACTMEM_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "bench/compare/training_run.h"
#include "hooks/actmem.h"
#include "models/catalogue.h"

namespace actmem::bench {
namespace {

bool cuda_managed() {
  if (!torch::cuda::is_available()) return false;
  install();
  return managed_device() == c10::DeviceType::CUDA;
}

constexpr const char* kNoDevice =
    "needs a CUDA device that actmem manages (none here, or ACTMEM_BACKEND=host)";

struct Trained {
  std::vector<std::vector<float>> grads;
  StepCost last;
  ActivationStats stats;
};

Trained train(const std::string& model, const std::string& policy) {
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
  RunSpec spec;
  spec.model = model;
  spec.size = models::Size::kTiny;
  spec.policy = policy;
  spec.device = c10::DeviceType::CUDA;
  TrainingRun run(spec);
  Trained trained;
  for (int step = 0; step < 3; ++step) trained.last = run.step(/*fresh_cache=*/step == 0);
  trained.grads = run.gradients();
  return trained;
}

class CudaModels : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaModels, RecomputeAndOffloadTrainExactlyLikeKeepInFewerBytes) {
  if (!cuda_managed()) GTEST_SKIP() << kNoDevice;
  const std::string& model = GetParam();
  const Trained keep = train(model, "keep");
  for (const char* policy : {"recompute", "chain", "offload"}) {
    const Trained trained = train(model, policy);
    EXPECT_EQ(trained.grads, keep.grads) << model << " under " << policy;
    EXPECT_LT(trained.last.peak_bytes, keep.last.peak_bytes) << model << " under " << policy;
    std::printf("%s/%s on CUDA: peak %.2f MiB, keep %.2f MiB\n", model.c_str(), policy,
                trained.last.peak_bytes / 1048576.0, keep.last.peak_bytes / 1048576.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaModels, ::testing::ValuesIn(models::model_names()),
                         [](const auto& info) { return info.param; });

TEST(CudaOffload, CopiesGoThroughTheCudaEngineAndUnpacksNeedNoHostWait) {
  if (!cuda_managed()) GTEST_SKIP() << kNoDevice;
  ScopeOptions options;
  options.offload_min_bytes = 0;
  ActivationScope scope(make_policy("offload"), options);
  EXPECT_STREQ(scope.host_store().engine().name(), "cuda");
  EXPECT_STREQ(scope.host_store().pool().backend().name(), "pinned");
  torch::nn::Linear linear(256, 256);
  linear->to(torch::kCUDA);
  const torch::Tensor x = torch::randn({512, 256}, torch::kCUDA);
  for (int step = 0; step < 2; ++step) {
    linear->zero_grad();
    torch::relu(linear(torch::relu(linear(x)))).pow(2).mean().backward();
  }
  const TransferStats transfers = scope.stats().transfers;
  EXPECT_GT(transfers.copies_to_host, 0);
  EXPECT_EQ(transfers.copies_to_device, transfers.copies_to_host);
  EXPECT_GT(transfers.copy_ns, 0) << "timed on the copy stream's events";
  EXPECT_LE(transfers.exposed_ns, transfers.copy_ns)
      << "the compute stream cannot wait longer for copies than they ran";
}

#ifdef ACTMEM_TORCH_CUDA
// Note [The device a scope serves]: a scope made while GPU 0 is current serves the GPU its tensors
// are on, as a DDP rank under `python -m actmem` needs (its script picks its GPU after actmem made
// the scope). Made for GPU 0, the store kept every tensor of GPU 1 where it was.
TEST(CudaOffload, AScopeServesTheGpuOfItsTensorsNotTheOneCurrentWhenItWasMade) {
  if (!cuda_managed()) GTEST_SKIP() << kNoDevice;
  if (torch::cuda::device_count() < 2) {
    GTEST_SKIP() << "needs two CUDA devices (" << torch::cuda::device_count() << " here)";
  }
  const c10::cuda::CUDAGuard first_is_current(0);
  const torch::Device second(torch::kCUDA, 1);
  auto train = [&](const char* policy) {
    torch::manual_seed(5);
    torch::nn::Linear linear(256, 256);
    linear->to(second);
    ScopeOptions options;
    options.offload_min_bytes = 0;
    ActivationScope scope(make_policy(policy), options);
    const torch::Tensor x = torch::randn({512, 256}).to(second);
    for (int step = 0; step < 2; ++step) {
      linear->zero_grad();
      torch::relu(linear(torch::relu(linear(x)))).pow(2).mean().backward();
    }
    EXPECT_EQ(scope.device(), std::optional<c10::Device>(second)) << policy;
    std::vector<torch::Tensor> grads;
    for (const torch::Tensor& p : linear->parameters()) grads.push_back(p.grad().cpu());
    return std::make_pair(grads, scope.stats().transfers);
  };
  const auto keep = train("keep");
  const auto offload = train("offload");
  EXPECT_GT(offload.second.copies_to_host, 0) << "GPU 1's tensors went out";
  for (std::size_t i = 0; i < keep.first.size(); ++i) {
    EXPECT_TRUE(torch::equal(offload.first[i], keep.first[i])) << i;
  }
}

// Note [An offload waits for the operator that saved the tensor]: the copy is queued later than
// the pack, here by an operator on another stream. It must still wait for the stream the tensor
// was saved on, where a long kernel holds back the exp that writes it: ordered after the current
// stream instead, the copy would carry the block's earlier bytes, and the gradient with them.
TEST(CudaOffload, ACopyQueuedFromAnotherStreamWaitsForTheStreamThatSavedTheTensor) {
  if (!cuda_managed()) GTEST_SKIP() << kNoDevice;
  const auto train = [](const char* policy) {
    ScopeOptions options;
    options.offload_min_bytes = 0;
    ActivationScope scope(make_policy(policy), options);
    torch::manual_seed(3);
    const torch::Tensor x = torch::randn({1 << 20}, torch::kCUDA).requires_grad_();
    const torch::Tensor w = torch::randn({1 << 10}, torch::kCUDA).requires_grad_();
    const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(main);
    inputs_ready.block(side);
    torch::Tensor y;
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      at::cuda::sleep(200'000'000);  // about 0.1 s: y is written long after the next operator
      y = x.exp();                   // saves y, which offload sends out
    }
    const torch::Tensor z = w.exp();  // the next operator, on the main stream, queues y's copy
    torch::Tensor loss;
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      loss = y.sum();
    }
    at::cuda::CUDAEvent loss_ready;
    loss_ready.record(side);
    loss_ready.block(main);
    (loss + z.sum()).backward();
    return std::make_pair(x.grad().cpu(), scope.stats().transfers.copies_to_host);
  };
  const auto [kept, none] = train("keep");
  const auto [offloaded, copies] = train("offload");
  EXPECT_EQ(none, 0);
  EXPECT_GT(copies, 0) << "y went out";
  EXPECT_TRUE(torch::equal(offloaded, kept)) << "the copy read y before exp wrote it";
}
#endif

}  // namespace
}  // namespace actmem::bench
