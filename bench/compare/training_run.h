// One model training under one policy, step by step, with what each step cost: the unit every
// comparison in the main job measures.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/compare/parked_storages.h"
#include "hooks/activation_scope.h"
#include "hooks/rng_state.h"
#include "models/model.h"
#include "models/training.h"

namespace actmem::bench {

struct RunSpec {
  std::string model;
  models::Size size = models::Size::kSmall;
  std::string policy = "keep";
  std::int64_t batch = 0;         // 0: the size's default batch
  std::int64_t budget_bytes = 0;  // device bytes the allocator may reserve; 0: no budget
  std::uint64_t seed = 1;         // weights and batch
  // Where the model trains: the CPU, or CUDA where actmem manages it (its bytes are then the CUDA
  // allocator's).
  c10::DeviceType device = c10::DeviceType::CPU;
};

struct StepCost {
  std::int64_t start_bytes = 0;     // allocated when the step began: weights, gradients, momentum
  std::int64_t peak_bytes = 0;      // allocated peak during the step, above start_bytes
  std::int64_t reserved_bytes = 0;  // reserved peak during the step
  double seconds = 0;
  std::int64_t offloaded_bytes = 0;  // by the policy, and by the pressure handler's evictions
  std::int64_t recomputed_bytes = 0;
  // The offload pipeline's copies that finished during the step, and how long compute waited for
  // them (TransferStats in hooks/host_store.h).
  std::int64_t copy_ns = 0;
  std::int64_t exposed_copy_ns = 0;
};

// Sets the device allocator's budget for its lifetime, and restores the previous one after.
class BudgetGuard {
 public:
  explicit BudgetGuard(std::int64_t budget_bytes);  // 0: no budget
  ~BudgetGuard();
  BudgetGuard(const BudgetGuard&) = delete;
  BudgetGuard& operator=(const BudgetGuard&) = delete;

 private:
  std::optional<std::size_t> previous_;
};

// A training run keeps to itself between its steps: its weights, gradients, optimizer state and
// batch are parked in host memory, its scope is paused and its CPU RNG state is put aside. So
// runs can take turns on one device (the main job interleaves its rows), each step seeing only
// its own run's bytes under its own budget and drawing the random numbers it would draw alone.
class TrainingRun {
 public:
  // Builds the model (weights from spec.seed), its batch and optimizer, and the policy's scope,
  // and parks them. Leaves the CPU RNG as it found it. Throws std::invalid_argument for an
  // unknown model or policy.
  explicit TrainingRun(const RunSpec& spec);
  ~TrainingRun();
  TrainingRun(const TrainingRun&) = delete;
  TrainingRun& operator=(const TrainingRun&) = delete;

  // One training step, measured. Outside the measured time: unparks the run, sets its budget, RNG
  // state and scope (and, with `fresh_cache`, empties the allocator's cache first, so that the
  // reserved bytes are this step's own), then parks it all again, however the step ends. An
  // actmem::OutOfMemoryError propagates: the step did not fit (and leaves nothing allocated: see
  // detail::release_failed_backward, hooks/engine.h).
  StepCost step(bool fresh_cache = false);

  // Each parameter's gradient after the last step, copied out of device memory.
  std::vector<std::vector<float>> gradients();
  const RunSpec& spec() const { return spec_; }

 private:
  class Turn;  // what step() sets up and undoes
  std::vector<at::Tensor> device_state() const;

  RunSpec spec_;
  std::shared_ptr<models::Model> model_;
  models::Batch batch_;
  std::unique_ptr<torch::optim::SGD> optimizer_;
  RngState rng_state_;  // the CPU generator's, between steps
  std::unique_ptr<ActivationScope> scope_;
  std::optional<ActivationScope::Pause> paused_;  // after scope_: resumes it before it goes
  ParkedStorages parked_;
};


// Each parameter's gradient, copied out of device memory.
std::vector<std::vector<float>> gradients_of(const torch::nn::Module& module);

// max |a - b| over every element of every pair of gradients.
double max_abs_difference(const std::vector<std::vector<float>>& a,
                          const std::vector<std::vector<float>>& b);

}  // namespace actmem::bench
