// What a segment costs a step beyond its compute, under each policy: a chain of tiny segments
// (BatchNorm, ReLU and a 32x32 linear layer on 8 rows) whose kernels take next to nothing, so that
// the step is the bookkeeping. On a GPU the CPU issues every kernel, and ResNet-1001's 333 blocks
// are 333 segments a step: what a segment costs the CPU there is what it costs the step.
//
//   build/release/bench/segment_overhead [--benchmark_filter=...]
//
// Rows: plain (no scope), keep, recompute (each segment rerun in backward, so its compute twice),
// auto with no budget (it plans to keep everything: the "ample budget" case of issue 15). The rows
// take turns step by step, the order rotating each round, so that neither order nor warm-up
// favours one; each row's step is the median over the rounds. Counters: microseconds a segment
// adds to a plain step's time, per row, and auto's and recompute's time over keep's.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hooks/actmem.h"

namespace actmem::bench {
namespace {

struct TinyBlockImpl : torch::nn::Module {
  explicit TinyBlockImpl(std::int64_t width)
      : norm(register_module("norm", torch::nn::BatchNorm1d(width))),
        linear(register_module("linear", torch::nn::Linear(width, width))) {}
  torch::Tensor forward(const torch::Tensor& x) { return linear(torch::relu(norm(x))); }
  torch::nn::BatchNorm1d norm;
  torch::nn::Linear linear;
};
TORCH_MODULE(TinyBlock);

constexpr std::int64_t kWidth = 32;
constexpr std::int64_t kRows = 8;

// A chain of `blocks` tiny blocks, each its own segment.
class TinyChain {
 public:
  explicit TinyChain(int blocks) {
    torch::manual_seed(0);
    input_ = torch::randn({kRows, kWidth});
    for (int i = 0; i < blocks; ++i) blocks_.emplace_back(kWidth);
  }
  // One training step's forward and backward.
  void step() {
    torch::Tensor x = input_;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      TinyBlock& block = blocks_[i];
      x = segment("block" + std::to_string(i), *block,
                  [&block](const torch::Tensor& in) { return block->forward(in); }, x);
    }
    x.sum().backward();
    for (TinyBlock& block : blocks_) {
      for (torch::Tensor& p : block->parameters()) p.mutable_grad() = torch::Tensor();
    }
  }

 private:
  torch::Tensor input_;
  std::vector<TinyBlock> blocks_;
};

// A row: its own chain (the same weights) and, for a policy, its own scope, paused while the
// other rows take their steps.
class Row {
 public:
  Row(std::string name, int blocks, const char* policy) : name_(std::move(name)), chain_(blocks) {
    if (policy != nullptr) {
      scope_ = std::make_unique<ActivationScope>(make_policy(policy));
      pause_.emplace(*scope_);
    }
  }
  ~Row() { pause_.reset(); }
  Row(const Row&) = delete;
  Row& operator=(const Row&) = delete;

  const std::string& name() const { return name_; }
  double step_seconds() {
    pause_.reset();  // this row's scope is active while it steps
    const auto start = std::chrono::steady_clock::now();
    chain_.step();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (scope_) pause_.emplace(*scope_);
    return took.count();
  }

 private:
  std::string name_;
  TinyChain chain_;
  std::unique_ptr<ActivationScope> scope_;
  std::optional<ActivationScope::Pause> pause_;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

void BM_SegmentOverhead(benchmark::State& state) {
  const int blocks = static_cast<int>(state.range(0));
  constexpr int kWarmup = 5;
  constexpr int kRounds = 200;
  at::set_num_threads(1);
  install();  // every row allocates through actmem's allocator
  std::vector<std::unique_ptr<Row>> rows;
  rows.push_back(std::make_unique<Row>("plain", blocks, nullptr));
  rows.push_back(std::make_unique<Row>("keep", blocks, "keep"));
  rows.push_back(std::make_unique<Row>("recompute", blocks, "recompute"));
  rows.push_back(std::make_unique<Row>("auto", blocks, "auto"));
  std::vector<std::vector<double>> times(rows.size());
  for (auto _ : state) {
    for (int round = 0; round < kWarmup + kRounds; ++round) {
      for (std::size_t k = 0; k < rows.size(); ++k) {
        const std::size_t r = (k + static_cast<std::size_t>(round)) % rows.size();
        const double seconds = rows[r]->step_seconds();
        if (round >= kWarmup) times[r].push_back(seconds);
      }
    }
  }
  const double plain = median(times[0]);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const double step = median(times[r]);
    state.counters[rows[r]->name() + "_step_us"] = step * 1e6;
    if (r > 0) state.counters[rows[r]->name() + "_us_per_segment"] = (step - plain) * 1e6 / blocks;
  }
  const double keep = median(times[1]);
  state.counters["recompute_over_keep"] = median(times[2]) / keep;
  state.counters["auto_over_keep"] = median(times[3]) / keep;
}
BENCHMARK(BM_SegmentOverhead)->Arg(64)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace actmem::bench

BENCHMARK_MAIN();
