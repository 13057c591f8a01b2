// The saved-tensor hooks actmem gives autograd, the Engine that hands them out, and the scope that
// turns them on. See activation_scope.h and segment.h for the contracts.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <chrono>

#include "hooks/activation_scope.h"
#include "hooks/engine.h"
#include "hooks/segment_frame.h"
#include "policy/policy_config.h"

namespace actmem {
namespace detail {
namespace {

thread_local std::shared_ptr<ScopeState> t_active_scope;

std::int64_t elapsed_ns(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

// One saved tensor under a scope: kept, offloaded to the host store, or left to its segment's
// rerun. Everything unpack needs is captured here at pack time (unpack runs on autograd's thread).
class ManagedHooks final : public torch::autograd::SavedVariableHooks {
 public:
  ManagedHooks(std::shared_ptr<ScopeState> scope, std::shared_ptr<SegmentFrame> frame)
      : scope_(std::move(scope)), frame_(std::move(frame)) {}

  void call_pack_hook(const at::Tensor& tensor) override {
    auto& c = scope_->counters;
    ++c.packed;
    SavedTensorInfo info;
    bytes_ = static_cast<std::int64_t>(tensor.numel()) * tensor.element_size();
    info.bytes = bytes_;
    info.segment = frame_ ? frame_->name : "";
    info.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    info.dtype = std::string(tensor.dtype().name());
    info.order = scope_->order++;
    info.is_leaf = tensor.is_leaf();
    if (frame_) index_ = frame_->packs++, frame_->wanted.push_back(0);

    action_ = scope_->policy->decide(info);
    if (info.is_leaf) action_ = Action::kKeep;  // held outside autograd: nothing to gain
    if (action_ == Action::kRecompute && !frame_) action_ = Action::kKeep;
    if (action_ == Action::kOffload &&
        static_cast<std::size_t>(bytes_) < scope_->options.offload_min_bytes) {
      action_ = Action::kKeep;
    }
    if (action_ == Action::kOffload) {
      const auto start = std::chrono::steady_clock::now();
      std::optional<at::Tensor> host = scope_->host.offload(tensor);
      if (host) {
        host_ = std::move(*host);
        c.copy_bytes += bytes_;
        c.copy_ns += elapsed_ns(start);
        ++c.tensors_offloaded;
        c.bytes_offloaded += bytes_;
        frame_.reset();
        return;
      }
      ++c.offload_fallbacks;  // the host pool is full: keep it, lose nothing
      action_ = Action::kKeep;
    }
    if (action_ == Action::kRecompute) {
      frame_->wanted[index_] = 1;
      ++c.tensors_recomputed;
      c.bytes_recomputed += bytes_;
      return;
    }
    frame_.reset();  // only a recomputed tensor needs its frame (and the inputs it holds)
    kept_ = tensor;
    ++c.tensors_kept;
    c.bytes_kept += bytes_;
  }

  at::Tensor call_unpack_hook() override {
    ++scope_->counters.unpacked;
    switch (action_) {
      case Action::kKeep:
        return kept_;
      case Action::kOffload: {
        const auto start = std::chrono::steady_clock::now();
        at::Tensor device = HostStore::restore(host_);
        scope_->counters.copy_bytes += bytes_;
        scope_->counters.copy_ns += elapsed_ns(start);
        return device;
      }
      case Action::kRecompute:
        return frame_->take(index_);
    }
    return {};
  }

 private:
  std::shared_ptr<ScopeState> scope_;
  std::shared_ptr<SegmentFrame> frame_;
  Action action_ = Action::kKeep;
  std::int64_t index_ = -1;
  std::int64_t bytes_ = 0;
  at::Tensor kept_;
  at::Tensor host_;
};

// A tensor saved while a segment is rerun in backward: handed to the frame, never unpacked (the
// rerun's graph is thrown away).
class CaptureHooks final : public torch::autograd::SavedVariableHooks {
 public:
  explicit CaptureHooks(SegmentFrame& frame) : frame_(frame) {}
  void call_pack_hook(const at::Tensor& tensor) override { frame_.capture(tensor); }
  at::Tensor call_unpack_hook() override {
    throw std::logic_error("actmem: a tensor saved by a segment's rerun was unpacked");
  }

 private:
  SegmentFrame& frame_;
};

}  // namespace

const std::shared_ptr<ScopeState>& active_scope() { return t_active_scope; }

std::unique_ptr<torch::autograd::SavedVariableHooks> hooks_for_this_thread() {
  if (SegmentFrame* frame = capturing_frame()) return std::make_unique<CaptureHooks>(*frame);
  if (!t_active_scope) return nullptr;
  return std::make_unique<ManagedHooks>(t_active_scope, forward_frame());
}

}  // namespace detail

ActivationScope::ActivationScope(std::shared_ptr<Policy> policy, ScopeOptions options)
    : state_(std::make_shared<detail::ScopeState>(std::move(policy), options)),
      previous_(detail::t_active_scope) {
  detail::t_active_scope = state_;
}

std::unique_ptr<ActivationScope> ActivationScope::from_environment() {
  const PolicyConfig config = PolicyConfig::from_environment();
  ScopeOptions options;
  options.offload_min_bytes = config.offload_min_bytes;
  return std::make_unique<ActivationScope>(make_policy(config.policy), options);
}

ActivationScope::~ActivationScope() { detail::t_active_scope = std::move(previous_); }

ActivationStats ActivationScope::stats() const {
  const auto& c = state_->counters;
  ActivationStats s;
  s.packed = c.packed;
  s.unpacked = c.unpacked;
  s.tensors_kept = c.tensors_kept;
  s.bytes_kept = c.bytes_kept;
  s.tensors_offloaded = c.tensors_offloaded;
  s.bytes_offloaded = c.bytes_offloaded;
  s.tensors_recomputed = c.tensors_recomputed;
  s.bytes_recomputed = c.bytes_recomputed;
  s.offload_fallbacks = c.offload_fallbacks;
  s.recomputations = c.recomputations;
  s.recompute_ns = c.recompute_ns;
  s.copy_bytes = c.copy_bytes;
  s.copy_ns = c.copy_ns;
  return s;
}

}  // namespace actmem
