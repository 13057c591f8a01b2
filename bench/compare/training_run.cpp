#include "bench/compare/training_run.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <stdexcept>

#include "hooks/install.h"
#include "hooks/rng_state.h"
#include "models/catalogue.h"
#include "policy/policy.h"
#include "policy/policy_config.h"

namespace actmem::bench {

BudgetGuard::BudgetGuard(std::int64_t budget_bytes) : previous_(device_memory().budget()) {
  device_memory().set_budget(budget_bytes > 0 ? std::optional<std::size_t>(budget_bytes)
                                              : std::nullopt);
}

BudgetGuard::~BudgetGuard() { device_memory().set_budget(previous_); }

// One turn of a run on the device: its state back, its budget, RNG and scope in force; undone in
// reverse, however the step ends.
class TrainingRun::Turn {
 public:
  Turn(TrainingRun& run, bool fresh_cache) : run_(run), budget_(run.spec_.budget_bytes) {
    run_.parked_.unpark();
    if (fresh_cache) device_memory().empty_cache();
    others_rng_ = RngState::capture();
    run_.rng_state_.restore();
    run_.paused_.reset();
  }
  ~Turn() {
    run_.paused_.emplace(*run_.scope_);
    run_.rng_state_ = RngState::capture();
    others_rng_.restore();
    run_.parked_.park(run_.device_state());
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

 private:
  TrainingRun& run_;
  BudgetGuard budget_;
  RngState others_rng_;
};

TrainingRun::TrainingRun(const RunSpec& spec) : spec_(spec) {
  install();  // before the first tensor: the model's bytes are device bytes
  if (spec_.batch <= 0) spec_.batch = models::default_batch(spec_.model, spec_.size);
  const RngState others_rng = RngState::capture();
  if (spec_.device != managed_device()) {
    throw std::invalid_argument(std::string("a run on ") + c10::DeviceTypeName(spec_.device) +
                                " needs actmem to manage that device; it manages " +
                                c10::DeviceTypeName(managed_device()) +
                                " (ACTMEM_BACKEND: host for the CPU, cuda or auto on a GPU "
                                "machine for CUDA)");
  }
  const c10::Device device(spec_.device);
  model_ = models::make_model(spec_.model, spec_.size, spec_.seed, device);  // seeds the CPU RNG
  batch_ = model_->make_batch(spec_.batch, spec_.seed).to(device);
  optimizer_ = models::make_optimizer(*model_);
  rng_state_ = RngState::capture();
  others_rng.restore();
  // ACTMEM_LOG, the least offloaded size, the host pool's cap, the prefetch window.
  PolicyConfig config = PolicyConfig::from_environment();
  config.policy = spec_.policy;
  scope_ = std::make_unique<ActivationScope>(
      make_device_policy(config),
      ScopeOptions::from(config));
  paused_.emplace(*scope_);
  parked_.park(device_state());
}

TrainingRun::~TrainingRun() = default;

std::vector<at::Tensor> TrainingRun::device_state() const {
  std::vector<at::Tensor> state = {batch_.input, batch_.target};
  for (const at::Tensor& p : model_->parameters()) {
    state.push_back(p);
    state.push_back(p.grad());
  }
  for (const at::Tensor& b : model_->buffers()) state.push_back(b);
  for (const auto& [key, param_state] : optimizer_->state()) {
    state.push_back(static_cast<const torch::optim::SGDParamState&>(*param_state).momentum_buffer());
  }
  return state;
}

StepCost TrainingRun::step(bool fresh_cache) {
  Turn turn(*this, fresh_cache);
  alloc::CachingAllocator& memory = device_memory();
  const ActivationStats before = scope_->stats();
  StepCost cost;
  cost.start_bytes = memory.stats().allocated_bytes.current;
  memory.reset_peak_stats();
  const auto start = std::chrono::steady_clock::now();
  models::train_step(*model_, *optimizer_, batch_);
  cost.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const alloc::AllocatorStats stats = memory.stats();
  cost.peak_bytes = stats.allocated_bytes.peak - cost.start_bytes;
  cost.reserved_bytes = stats.reserved_bytes.peak;
  const ActivationStats after = scope_->stats();
  // Evictions are offloads too: the pressure handler's, not the plan's.
  cost.offloaded_bytes = (after.bytes_offloaded + after.bytes_evicted) -
                         (before.bytes_offloaded + before.bytes_evicted);
  cost.recomputed_bytes = (after.bytes_recomputed + after.bytes_dropped) -
                          (before.bytes_recomputed + before.bytes_dropped);
  cost.copy_ns = after.transfers.copy_ns - before.transfers.copy_ns;
  cost.exposed_copy_ns = after.transfers.exposed_ns - before.transfers.exposed_ns;
  return cost;
}

std::vector<std::vector<float>> TrainingRun::gradients() {
  parked_.unpark();
  std::vector<std::vector<float>> grads = gradients_of(*model_);
  parked_.park(device_state());
  return grads;
}

std::vector<std::vector<float>> gradients_of(const torch::nn::Module& module) {
  std::vector<std::vector<float>> grads;
  for (const auto& p : module.parameters()) {
    const at::Tensor g = p.grad().detach().to(torch::kFloat).contiguous();
    grads.emplace_back(g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
  }
  return grads;
}

double max_abs_difference(const std::vector<std::vector<float>>& a,
                          const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) throw std::invalid_argument("gradient lists differ in length");
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size()) throw std::invalid_argument("gradient shapes differ");
    for (std::size_t j = 0; j < a[i].size(); ++j) {
      worst = std::max(worst, static_cast<double>(std::abs(a[i][j] - b[i][j])));
    }
  }
  return worst;
}

}  // namespace actmem::bench
