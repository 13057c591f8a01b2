// The auto policy on the reference models (tiny): the same bits as keep under a budget, keep's
// behaviour when the budget holds keep's peak, and a deliberately wrong plan kept under the budget
// by the pressure handler.
#include <gtest/gtest.h>

#include "bench/compare/training_run.h"
#include "hooks/actmem.h"
#include "models/catalogue.h"
#include "models/training.h"
#include "policy/auto_policy.h"

namespace actmem::bench {
namespace {

constexpr int kSteps = 3;  // auto: one profiled step, then two planned ones

struct Trained {
  std::vector<std::vector<float>> grads;
  std::vector<StepCost> costs;
};

Trained train(const std::string& model, const std::string& policy, std::int64_t budget = 0,
              int steps = kSteps) {
  RunSpec spec;
  spec.model = model;
  spec.size = models::Size::kTiny;
  spec.policy = policy;
  spec.budget_bytes = budget;
  TrainingRun run(spec);
  Trained t;
  // The first step from an empty cache, so that the reserved bytes are this run's.
  for (int i = 0; i < steps; ++i) t.costs.push_back(run.step(/*fresh_cache=*/i == 0));
  t.grads = run.gradients();
  return t;
}

// keep's starting bytes plus `percent` of what it reserved above them, as the main job computes.
std::int64_t budget_at(const StepCost& keep, int percent) {
  return keep.start_bytes + (keep.reserved_bytes - keep.start_bytes) * percent / 100;
}

struct Case {
  std::string model;
  // The budget, as in the main job. At tiny size the activations (8 to 15 MiB) are near the
  // allocator's segment granularity (2 and 20 MiB): DenseNet's 8 MiB failed once in ten runs at
  // 75 % on fragmentation (which segments the plan sends out depends on measured times), the
  // LSTM's at 50 %. At 100 % DenseNet's profiled step and first plans still send tensors out.
  // The main job goes lower at small size.
  int percent;
};

class AutoOnModels : public ::testing::TestWithParam<Case> {};

TEST_P(AutoOnModels, TrainsExactlyLikeKeepWithinTheBudget) {
  const Case& c = GetParam();
  const Trained keep = train(c.model, "keep");
  const std::int64_t budget = budget_at(keep.costs.back(), c.percent);
  const Trained planned = train(c.model, "auto", budget);  // throws if the budget is crossed
  EXPECT_EQ(planned.grads, keep.grads);
  for (const StepCost& cost : planned.costs) EXPECT_LE(cost.reserved_bytes, budget);
  const StepCost& last = planned.costs.back();
  if (c.percent < 100) {
    EXPECT_GT(last.offloaded_bytes + last.recomputed_bytes, 0) << "the plan sent something out";
    EXPECT_LT(last.peak_bytes, keep.costs.back().peak_bytes);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, AutoOnModels,
                         ::testing::Values(Case{"resnet", 50}, Case{"densenet", 100},
                                           Case{"lstm", 75}, Case{"vnet", 75}),
                         [](const auto& param_info) { return param_info.param.model; });

// The bytes of a model's buffers (BatchNorm's running stats), rounded up to the allocator's 512 B
// per buffer. A policy that may rerun segments holds a copy of each segment's buffers as its
// forward began (ForwardContext::capture_buffers), while a rerun may come: at most twice these,
// since VNet's input segment names the whole model as its module, and each stage its own.
std::int64_t buffer_bytes(const std::string& name) {
  std::int64_t bytes = 0;
  for (const at::Tensor& buffer : models::make_model(name, models::Size::kTiny)->buffers()) {
    bytes += (static_cast<std::int64_t>(buffer.nbytes()) + 511) / 512 * 512;
  }
  return bytes;
}

// Once its plan has settled: the profiled step sends everything out (it must fit before anything
// is known), and a plan may send some out until the allocator's overhead under it is measured
// (a few steps at most).
TEST(AutoPolicy, BehavesAsKeepWhenTheBudgetHoldsKeepsPeak) {
  constexpr int kSettled = 4, kLongerSteps = 6;
  for (const std::string& model : models::model_names()) {
    const Trained keep = train(model, "keep", 0, kLongerSteps);
    const Trained planned =
        train(model, "auto", keep.costs.back().reserved_bytes * 5 / 4, kLongerSteps);
    for (int i = kSettled; i < kLongerSteps; ++i) {
      EXPECT_EQ(planned.costs[i].offloaded_bytes, 0) << model << " step " << i;
      EXPECT_EQ(planned.costs[i].recomputed_bytes, 0) << model << " step " << i;
      EXPECT_GE(planned.costs[i].peak_bytes, keep.costs[i].peak_bytes) << model << " step " << i;
      EXPECT_LE(planned.costs[i].peak_bytes, keep.costs[i].peak_bytes + 2 * buffer_bytes(model))
          << model << " step " << i;
    }
    EXPECT_EQ(planned.grads, keep.grads) << model;
  }
}

// `steps` training steps under `budget` bytes (0: none); the last one's starting and reserved
// bytes.
StepCost steps_under(int steps, std::int64_t budget, models::Model& model,
                     torch::optim::Optimizer& optimizer, const models::Batch& batch) {
  BudgetGuard guard(budget);
  StepCost cost;
  for (int i = 0; i < steps; ++i) {
    cost.start_bytes = device_memory().stats().allocated_bytes.current;
    device_memory().reset_peak_stats();
    models::train_step(model, optimizer, batch);
    cost.reserved_bytes = device_memory().stats().reserved_bytes.peak;
  }
  return cost;
}

// A plan made for a batch of 4 without pressure (keep everything), applied on purpose to a batch
// of 16 under half of keep's activation memory: only the pressure handler's evictions keep the
// step within the budget, and nothing is lost.
TEST(AutoPolicy, ThePressureHandlerRescuesAWrongPlan) {
  install();
  auto run = [](bool wrong_plan, std::int64_t budget, ActivationStats* stats) {
    auto model = models::make_model("resnet", models::Size::kTiny, 3);
    auto optimizer = models::make_optimizer(*model);
    const models::Batch small = model->make_batch(4, 1), large = model->make_batch(16, 2);
    std::shared_ptr<Policy> policy;
    if (wrong_plan) {
      AutoOptions options;
      options.budget = [] { return device_memory().budget(); };
      options.plan_once = true;
      policy = std::make_shared<AutoPolicy>(options);
    } else {
      policy = make_policy("keep");
    }
    ActivationScope scope(policy);
    device_memory().empty_cache();
    models::train_step(*model, *optimizer, small);  // profiled and planned: keep everything
    const StepCost cost = steps_under(2, budget, *model, *optimizer, large);
    if (stats) *stats = scope.stats();
    return std::make_pair(gradients_of(*model), cost);
  };
  const auto [keep_grads, keep_cost] = run(false, 0, nullptr);
  const std::int64_t budget = budget_at(keep_cost, 50);
  ActivationStats stats;
  const auto [grads, cost] = run(true, budget, &stats);
  EXPECT_GT(stats.evictions + stats.drops, 0)
      << "the plan kept everything: only evictions can fit the budget";
  EXPECT_LE(cost.reserved_bytes, budget);
  EXPECT_EQ(grads, keep_grads);
}

std::vector<float> values_of(const torch::Tensor& t) {
  const torch::Tensor f = t.detach().to(torch::kFloat).contiguous();
  return {f.data_ptr<float>(), f.data_ptr<float>() + f.numel()};
}

// Keeps everything and lets the pressure handler evict: what auto does with a plan that is wrong.
class KeepUntilPressed final : public Policy {
 public:
  const char* name() const override { return "keep-until-pressed"; }
  Action decide(const SavedTensorInfo&) override { return Action::kKeep; }
  bool evicts_under_pressure() const override { return true; }
};

// With no room in the host pool, the pressure handler can only drop kept tensors for their
// segment's rerun: the step fits the budget (dropping frees at most what the recompute policy
// does), and the gradients, parameters and BatchNorm statistics come out as keep's. The LSTM's
// segments save their inputs as other views (the hidden state's per-layer slices), which a rerun
// must not take for the inputs themselves.
class DropsOnModels : public ::testing::TestWithParam<Case> {};

TEST_P(DropsOnModels, ThePressureHandlerDropsForRecomputeWhenOffloadCannotTakeMore) {
  install();
  const Case& c = GetParam();
  auto run = [&c](std::shared_ptr<Policy> policy, std::int64_t budget, ActivationStats* stats) {
    auto model = models::make_model(c.model, models::Size::kTiny, 3);
    auto optimizer = models::make_optimizer(*model);
    const models::Batch batch =
        model->make_batch(models::default_batch(c.model, models::Size::kTiny), 2);
    ScopeOptions options;
    options.host_capacity = 0;  // offloading is impossible
    ActivationScope scope(std::move(policy), options);
    device_memory().empty_cache();
    const StepCost cost = steps_under(2, budget, *model, *optimizer, batch);
    if (stats) *stats = scope.stats();
    std::vector<std::vector<float>> state = gradients_of(*model);
    for (const torch::Tensor& p : model->parameters()) state.push_back(values_of(p));
    for (const torch::Tensor& b : model->buffers()) state.push_back(values_of(b));
    return std::make_pair(state, cost);
  };
  const auto [keep_state, keep_cost] = run(make_policy("keep"), 0, nullptr);
  ActivationStats stats;
  const auto [state, cost] =
      run(std::make_shared<KeepUntilPressed>(), budget_at(keep_cost, c.percent), &stats);
  EXPECT_GT(stats.drops, 0) << "only drops can fit the budget";
  EXPECT_GT(stats.recomputations, 0);
  EXPECT_EQ(state, keep_state);
}

INSTANTIATE_TEST_SUITE_P(Tiny, DropsOnModels,
                         ::testing::Values(Case{"resnet", 75}, Case{"lstm", 90}),
                         [](const auto& param_info) { return param_info.param.model; });

// A host pool that takes a few tensors (1 MiB) under a budget that recompute fits: auto's profiled
// step offloads until the pool refuses, then recomputes, and its plans offload no more than the
// pool held; the step fits the budget auto fits without a pool at all, and trains as keep does.
// (It used to keep what the pool refused and fail the profiled step as "budget too small".)
class SmallHostPool : public ::testing::TestWithParam<Case> {};

TEST_P(SmallHostPool, AutoRecomputesWhatThePoolCannotTake) {
  install();
  const Case& c = GetParam();
  auto run = [&c](const std::string& policy_name, std::optional<std::size_t> host,
                  std::int64_t budget, ActivationStats* stats) {
    auto model = models::make_model(c.model, models::Size::kTiny, 3);
    auto optimizer = models::make_optimizer(*model);
    const models::Batch batch =
        model->make_batch(models::default_batch(c.model, models::Size::kTiny), 2);
    PolicyOptions policy_options;
    policy_options.budget = [] { return device_memory().budget(); };
    policy_options.host_capacity = host;
    ScopeOptions options;
    options.host_capacity = host;
    ActivationScope scope(make_policy(policy_name, policy_options), options);
    device_memory().empty_cache();
    const StepCost cost = steps_under(4, budget, *model, *optimizer, batch);
    if (stats) *stats = scope.stats();
    return std::make_pair(gradients_of(*model), cost);
  };
  const auto [keep_grads, keep_cost] = run("keep", std::nullopt, 0, nullptr);
  const std::int64_t budget = budget_at(keep_cost, c.percent);
  ActivationStats stats;
  const auto [grads, cost] = run("auto", std::size_t{1} << 20, budget, &stats);
  EXPECT_GT(stats.offload_fallbacks, 0) << "the pool refused tensors";
  EXPECT_GT(stats.recomputations, 0);
  EXPECT_LE(cost.reserved_bytes, budget);
  EXPECT_EQ(grads, keep_grads);
}

INSTANTIATE_TEST_SUITE_P(Tiny, SmallHostPool,
                         ::testing::Values(Case{"resnet", 50}, Case{"lstm", 60}),
                         [](const auto& param_info) { return param_info.param.model; });

// A step whose graph is dropped without a backward (here: an error between the forward and the
// backward) must not leave the policy counting packs into it: the next step starts afresh and
// follows the plan made for its shape, instead of being taken for a new shape.
TEST(AutoPolicy, AStepThatFailsBeforeBackwardDoesNotDerailThePlan) {
  install();
  auto model = models::make_model("lstm", models::Size::kTiny, 3);
  auto optimizer = models::make_optimizer(*model);
  const models::Batch batch = model->make_batch(8, 1);
  auto policy = std::make_shared<AutoPolicy>(AutoOptions{});
  ActivationScope scope(policy);
  models::train_step(*model, *optimizer, batch);  // profiled, then planned
  ASSERT_EQ(policy->plans_made(), 1);
  EXPECT_THROW(
      {
        const torch::Tensor loss = model->loss(batch);
        throw std::runtime_error("the caller gave up before backward");
      },
      std::runtime_error);
  models::train_step(*model, *optimizer, batch);
  models::train_step(*model, *optimizer, batch);
  EXPECT_EQ(policy->plans_made(), 1) << "later steps followed the plan, none was profiled again";
  EXPECT_EQ(scope.stats().steps, 3) << "the abandoned step is not counted as one";
}

// A budget the step cannot fit even with every activation out fails with an error that says how
// much the step needs, not with a bare out-of-memory, and leaves nothing behind.
TEST(AutoPolicy, ABudgetTooSmallForTheStepSaysWhatItNeeds) {
  const Trained keep = train("resnet", "keep");
  const std::int64_t before = device_memory().stats().allocated_bytes.current;
  try {
    train("resnet", "auto", budget_at(keep.costs.back(), 10));
    FAIL() << "expected BudgetTooSmallError";
  } catch (const BudgetTooSmallError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("is too small for this training step"), std::string::npos) << message;
    EXPECT_NE(message.find("ACTMEM_BUDGET must be at least"), std::string::npos) << message;
    EXPECT_NE(message.find("That is a lower bound"), std::string::npos) << message;
    EXPECT_GT(e.least_budget_bytes(), 0u);
  }
  EXPECT_EQ(device_memory().stats().allocated_bytes.current, before);
}

}  // namespace
}  // namespace actmem::bench
