// Training runs that take turns on one device: each step sees only its own run's bytes, and each
// run trains to the bit as it would alone (its RNG stream, its scope, its parked state).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "bench/compare/parked_storages.h"
#include "bench/compare/round_robin.h"
#include "bench/compare/training_run.h"
#include "allocator/errors.h"
#include "hooks/actmem.h"

namespace actmem::bench {
namespace {

RunSpec tiny(const std::string& model, const std::string& policy) {
  RunSpec spec;
  spec.model = model;
  spec.size = models::Size::kTiny;
  spec.policy = policy;
  return spec;
}

TEST(ParkedStorages, BytesComeBackBitForBitAndViewsFollowTheirStorage) {
  install();
  alloc::CachingAllocator& memory = device_memory();
  const torch::Tensor base = torch::randn({256, 256});
  const torch::Tensor view = base.t();
  const torch::Tensor expected = base.clone();
  const std::int64_t with_both = memory.stats().allocated_bytes.current;
  ParkedStorages parked;
  parked.park({base, view, torch::Tensor()});  // one storage, parked once; undefined skipped
  EXPECT_TRUE(parked.parked());
  EXPECT_EQ(with_both - memory.stats().allocated_bytes.current, 256 * 256 * 4)
      << "the storage's device bytes went back to the allocator";
  parked.unpark();
  EXPECT_FALSE(parked.parked());
  EXPECT_EQ(memory.stats().allocated_bytes.current, with_both);
  EXPECT_TRUE(memory.owns(base.data_ptr()));
  EXPECT_TRUE(torch::equal(base, expected));
  EXPECT_EQ(view.data_ptr(), base.data_ptr());
  EXPECT_TRUE(torch::equal(view, expected.t()));
}

// A budget that refuses one storage while unparking (a run's turn that does not fit) must leave
// every storage parked, not some back on the device (found by a review: they stayed resident
// through the other runs' turns).
TEST(ParkedStorages, AnUnparkThatRunsOutOfMemoryLeavesEveryStorageParked) {
  install();
  alloc::CachingAllocator& memory = device_memory();
  const torch::Tensor small = torch::randn({1024});
  const torch::Tensor large = torch::randn({8 << 20});  // 32 MiB
  const torch::Tensor expected = large.clone();
  ParkedStorages parked;
  parked.park({small, large});
  memory.empty_cache();
  const std::int64_t before = memory.stats().allocated_bytes.current;
  memory.set_budget(static_cast<std::size_t>(memory.stats().reserved_bytes.current) + (4u << 20));
  EXPECT_THROW(parked.unpark(), OutOfMemoryError);
  memory.set_budget(std::nullopt);
  EXPECT_TRUE(parked.parked());
  EXPECT_EQ(memory.stats().allocated_bytes.current, before) << "the small one went back too";
  EXPECT_FALSE(memory.owns(small.data_ptr()));
  parked.unpark();
  EXPECT_TRUE(torch::equal(large, expected));
}

// The LSTM draws dropout masks from the CPU generator: runs taking turns must each draw the
// stream they would draw alone, and their steps must start from their own bytes only.
TEST(TrainingRun, RunsTakingTurnsTrainExactlyAsAlone) {
  constexpr int kSteps = 3;
  TrainingRun alone(tiny("lstm", "keep"));
  std::vector<StepCost> alone_costs;
  for (int i = 0; i < kSteps; ++i) alone_costs.push_back(alone.step());
  const auto alone_grads = alone.gradients();

  TrainingRun keep(tiny("lstm", "keep"));
  TrainingRun recompute(tiny("lstm", "recompute"));
  TrainingRun offload(tiny("lstm", "offload"));
  torch::manual_seed(12345);  // whatever the rest of the program does with the generator
  const std::vector<TurnsTaken> turns =
      take_turns({&keep, &recompute, &offload}, /*warmup=*/1, /*rounds=*/kSteps - 1);
  for (const TurnsTaken& taken : turns) {
    ASSERT_FALSE(taken.did_not_fit) << taken.did_not_fit->message;
    ASSERT_EQ(taken.measured.size(), static_cast<std::size_t>(kSteps - 1));
  }
  EXPECT_EQ(keep.gradients(), alone_grads);
  EXPECT_EQ(recompute.gradients(), alone_grads);
  EXPECT_EQ(offload.gradients(), alone_grads);
  for (std::size_t i = 0; i < turns[0].measured.size(); ++i) {
    EXPECT_EQ(turns[0].measured[i].start_bytes, alone_costs[i + 1].start_bytes)
        << "keep's step " << i + 1 << " saw only its own weights, gradients and momentum";
    EXPECT_EQ(turns[0].measured[i].peak_bytes, alone_costs[i + 1].peak_bytes);
  }
}

TEST(TrainingRun, AStepThatDoesNotFitEndsItsRunsTurnsOnly) {
  TrainingRun fits(tiny("resnet", "keep"));
  RunSpec tight = tiny("resnet", "keep");
  tight.budget_bytes = 4 << 20;
  TrainingRun does_not(tight);
  const std::vector<TurnsTaken> turns = take_turns({&does_not, &fits}, 0, 3);
  ASSERT_TRUE(turns[0].did_not_fit);
  EXPECT_NE(turns[0].did_not_fit->message.find("out of memory"), std::string::npos);
  EXPECT_GT(turns[0].did_not_fit->least_budget_bytes, tight.budget_bytes);
  EXPECT_TRUE(turns[0].measured.empty());
  EXPECT_FALSE(turns[1].did_not_fit);
  EXPECT_EQ(turns[1].measured.size(), 3u);
}

// LibTorch's engine leaves the tasks of a backward that threw (out of memory in a backward kernel)
// in its thread's ready queue, holding their part of the graph and its saved tensors until the
// next backward there: a run whose step ran out of memory must not leave them to the next run.
TEST(TrainingRun, AStepOutOfMemoryInBackwardLeavesNothingAllocated) {
  RunSpec spec = tiny("resnet", "recompute");
  spec.batch = 64;
  std::int64_t fits = 0;
  {
    TrainingRun run(spec);
    run.step(/*fresh_cache=*/true);
    fits = run.step(/*fresh_cache=*/true).reserved_bytes;
  }
  const std::int64_t before = device_memory().stats().allocated_bytes.current;
  int failed = 0;
  // Budgets a little under what the step needs fail in backward, where the rerun allocates.
  for (int percent : {70, 78, 86, 94}) {
    spec.budget_bytes = fits * percent / 100;
    {
      TrainingRun run(spec);
      try {
        run.step(/*fresh_cache=*/true);
        run.step(/*fresh_cache=*/true);
      } catch (const OutOfMemoryError&) {
        ++failed;
      }
    }
    EXPECT_EQ(device_memory().stats().allocated_bytes.current, before) << percent << "%";
  }
  EXPECT_GT(failed, 1) << "the budgets were meant to fail";
}

TEST(TimeSpread, TheMedianAndTheExtremes) {
  std::vector<StepCost> steps(5);
  const double seconds[] = {0.3, 0.1, 0.5, 0.2, 0.4};
  for (int i = 0; i < 5; ++i) steps[i].seconds = seconds[i];
  const TimeSpread spread = time_spread(steps);
  EXPECT_EQ(spread.median, 0.3);
  EXPECT_EQ(spread.least, 0.1);
  EXPECT_EQ(spread.greatest, 0.5);
  EXPECT_EQ(time_spread({}).median, 0.0);
}

}  // namespace
}  // namespace actmem::bench
