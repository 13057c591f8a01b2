// No synchronising CUDA call on a training step's path that plain LibTorch does not make itself:
// under keep, recompute and offload, the steady-state steps of each reference model (`tiny`, on
// CUDA) make exactly the calls that make the host wait for the device, or allocate or free memory,
// that the same steps make without a scope. They are counted, on every thread, through CUPTI's
// callback API over the runtime and the driver.
//
// Plain LibTorch makes some itself (the loss's item() copies to the host and waits): they are the
// baseline, not a failure. What the test forbids is actmem's own: a host wait for a copy, a
// cudaFree or cudaMalloc in steady state, a blocking copy.
#include <cupti.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "hooks/actmem.h"
#include "models/catalogue.h"
#include "models/training.h"

namespace actmem {
namespace {

// The runtime and driver calls that wait for the device, or may: the *Synchronize calls, frees,
// allocations, and copies and memsets that are not asynchronous.
bool synchronising(std::string_view name) {
  const auto starts = [&](std::string_view prefix) {
    return name.substr(0, prefix.size()) == prefix;
  };
  if (name.find("Async") != std::string_view::npos) return false;
  if (name.find("Synchronize") != std::string_view::npos) return true;
  for (std::string_view prefix :
       {"cudaFree", "cuMemFree", "cudaMalloc", "cuMemAlloc", "cudaHostAlloc", "cuMemHostAlloc",
        "cudaMemcpy", "cuMemcpy", "cudaMemset", "cuMemsetD"}) {
    if (starts(prefix)) return true;
  }
  return false;
}

// Runs everywhere: the list the GPU test holds the steps to.
TEST(SynchronisingCallNames, WaitsFreesAllocationsAndBlockingCopiesButNothingAsynchronous) {
  for (const char* name : {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cuEventSynchronize",
                           "cudaFree", "cuMemFree_v2", "cudaFreeHost", "cudaMalloc",
                           "cudaHostAlloc", "cudaMemcpy", "cuMemcpyDtoH_v2", "cudaMemset"}) {
    EXPECT_TRUE(synchronising(name)) << name;
  }
  for (const char* name : {"cudaMemcpyAsync", "cuMemcpyHtoDAsync_v2", "cudaFreeAsync",
                           "cudaMallocAsync", "cudaEventRecord", "cudaEventQuery",
                           "cudaStreamWaitEvent", "cudaLaunchKernel", "cudaEventElapsedTime"}) {
    EXPECT_FALSE(synchronising(name)) << name;
  }
}

// Counts synchronising calls from the moment it is made, by name.
class SynchronisingCalls {
 public:
  SynchronisingCalls() {
    check(cuptiSubscribe(&subscriber_, &SynchronisingCalls::on_call, this), "cuptiSubscribe");
    check(cuptiEnableDomain(1, subscriber_, CUPTI_CB_DOMAIN_RUNTIME_API), "cuptiEnableDomain");
    check(cuptiEnableDomain(1, subscriber_, CUPTI_CB_DOMAIN_DRIVER_API), "cuptiEnableDomain");
  }
  ~SynchronisingCalls() { cuptiUnsubscribe(subscriber_); }
  SynchronisingCalls(const SynchronisingCalls&) = delete;
  SynchronisingCalls& operator=(const SynchronisingCalls&) = delete;

  // The counts since the last take.
  std::map<std::string, int> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(counts_, {});
  }

 private:
  static void check(CUptiResult result, const char* call) {
    if (result == CUPTI_SUCCESS) return;
    const char* name = nullptr;
    cuptiGetResultString(result, &name);
    throw std::runtime_error(std::string(call) + " failed: " + (name ? name : "?"));
  }

  static void CUPTIAPI on_call(void* self, CUpti_CallbackDomain /*domain*/, CUpti_CallbackId /*id*/,
                               const void* data) {
    const auto* call = static_cast<const CUpti_CallbackData*>(data);
    if (call->callbackSite != CUPTI_API_ENTER || call->functionName == nullptr) return;
    if (!synchronising(call->functionName)) return;
    auto* calls = static_cast<SynchronisingCalls*>(self);
    std::lock_guard<std::mutex> lock(calls->mutex_);
    ++calls->counts_[call->functionName];
  }

  CUpti_SubscriberHandle subscriber_ = nullptr;
  std::mutex mutex_;
  std::map<std::string, int> counts_;
};

std::string describe(const std::map<std::string, int>& counts) {
  std::ostringstream out;
  for (const auto& [name, count] : counts) out << name << " ×" << count << "; ";
  return counts.empty() ? "none" : out.str();
}

constexpr int kWarmupSteps = 3;  // pools, slabs, events and cuDNN's plans settle
constexpr int kCountedSteps = 3;

// The synchronising calls of kCountedSteps steps of `model` after the warm-up, under `policy`
// (none: no scope, plain LibTorch on actmem's allocator).
std::map<std::string, int> calls_in_steady_steps(SynchronisingCalls& calls,
                                                 const std::string& model,
                                                 std::optional<std::string> policy) {
  auto net = models::make_model(model, models::Size::kTiny, /*seed=*/1, c10::Device(c10::kCUDA));
  const models::Batch batch =
      net->make_batch(models::default_batch(model, models::Size::kTiny), 1).to(c10::kCUDA);
  auto optimizer = models::make_optimizer(*net);
  std::optional<ActivationScope> scope;
  if (policy) {
    ScopeOptions options;
    options.offload_min_bytes = 0;  // every saved tensor goes through the pipeline
    scope.emplace(make_policy(*policy), options);
  }
  for (int i = 0; i < kWarmupSteps; ++i) models::train_step(*net, *optimizer, batch);
  torch::cuda::synchronize();
  calls.take();
  for (int i = 0; i < kCountedSteps; ++i) models::train_step(*net, *optimizer, batch);
  return calls.take();
}

class CudaSyncCalls : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaSyncCalls, StepsMakeNoneBeyondPlainLibTorchs) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device (none here)";
  install();
  if (managed_device() != c10::DeviceType::CUDA) {
    GTEST_SKIP() << "needs actmem to manage the CUDA device (ACTMEM_BACKEND=host?)";
  }
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
  SynchronisingCalls calls;
  const std::string& model = GetParam();
  const std::map<std::string, int> plain = calls_in_steady_steps(calls, model, std::nullopt);
  std::printf("%s: plain LibTorch's synchronising calls in %d steps: %s\n", model.c_str(),
              kCountedSteps, describe(plain).c_str());
  for (const char* policy : {"keep", "recompute", "offload"}) {
    const std::map<std::string, int> under = calls_in_steady_steps(calls, model, policy);
    EXPECT_EQ(under, plain) << model << " under " << policy << ": " << describe(under)
                            << "; plain LibTorch: " << describe(plain);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaSyncCalls, ::testing::ValuesIn(models::model_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace actmem
