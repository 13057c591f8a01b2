// The draw watch (hooks/rng_use.h) on its own: which operators count as drawing random numbers.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <future>
#include <string>

#include "hooks/rng_use.h"

namespace actmem {
namespace {

TEST(RngUseWatch, AnOperatorTakingAGeneratorDraws) {
  const RngUseWatch watch;
  EXPECT_FALSE(watch.drew());
  (void)torch::relu(torch::ones({4}));
  EXPECT_FALSE(watch.drew());
  (void)torch::bernoulli(torch::full({4}, 0.5));
  EXPECT_TRUE(watch.drew());
}

// The attention kernels draw from the default generator without taking one, and only with a
// dropout probability: at dropout_p = 0 (a model trained without attention dropout) they take no
// Philox offset, and a segment of them needs no generator restored in its rerun. Counting them
// made every such segment's rerun set and check the generators, and report "another thread drew"
// when one did. They are CUDA kernels: here the dispatcher finds no CPU kernel and throws, after
// the watch has seen the call with its arguments.
TEST(RngUseWatch, AttentionDrawsOnlyWithADropoutProbability) {
  const torch::Tensor q = torch::randn({1, 2, 4, 8});
  for (const double dropout_p : {0.0, 0.1}) {
    const RngUseWatch watch;
    EXPECT_ANY_THROW((void)at::_scaled_dot_product_flash_attention(q, q, q, dropout_p));
    EXPECT_EQ(watch.drew(), dropout_p != 0.0) << "flash, dropout_p " << dropout_p;
  }
  for (const double dropout_p : {0.0, 0.1}) {
    const RngUseWatch watch;
    EXPECT_ANY_THROW((void)at::_scaled_dot_product_efficient_attention(
        q, q, q, /*attn_bias=*/std::nullopt, /*compute_log_sumexp=*/true, dropout_p));
    EXPECT_EQ(watch.drew(), dropout_p != 0.0) << "efficient, dropout_p " << dropout_p;
  }
}

// Each operator the watch reads dropout_p of has that argument (else it would count always).
TEST(RngUseWatch, TheAttentionKernelsItReadsTakeDropoutP) {
  for (const char* name :
       {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_cudnn_attention", "aten::_flash_attention_forward",
        "aten::_efficient_attention_forward"}) {
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    ASSERT_TRUE(op.has_value()) << name;
    EXPECT_TRUE(op->schema().argumentIndexWithName("dropout_p").has_value()) << name;
  }
}

// A thread-local RecordFunction callback follows at::ThreadLocalState to the threads that take it
// on (at::launch here; autograd's device threads too). There no watch is open: the callback read
// the innermost watch's start from an empty list (a crash, at best). The other thread's draws are
// not the watch's.
TEST(RngUseWatch, ItsCallbackOnAnotherThreadRecordsNothing) {
  const RngUseWatch watch;
  at::Generator generator = at::detail::createCPUGenerator(/*seed_val=*/7);
  std::promise<void> drawn;
  at::launch([&] {
    (void)torch::bernoulli(torch::full({4}, 0.5), generator);
    drawn.set_value();
  });
  drawn.get_future().wait();
  EXPECT_FALSE(watch.drew());
  EXPECT_TRUE(watch.generators_given().empty());
}

}  // namespace
}  // namespace actmem
