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

// One saved tensor under a scope: kept, offloaded to the host store, or left to its segment's
// rerun. Everything unpack needs is captured here at pack time (unpack runs on autograd's thread).
class ManagedHooks final : public torch::autograd::SavedVariableHooks {
 public:
  ManagedHooks(std::shared_ptr<ScopeState> scope, std::shared_ptr<SegmentFrame> frame)
      : scope_(std::move(scope)), frame_(std::move(frame)) {}

  void call_pack_hook(const at::Tensor& tensor) override {
    SavedTensorInfo info;
    bytes_ = static_cast<std::int64_t>(tensor.numel()) * tensor.element_size();
    info.bytes = bytes_;
    info.segment = frame_ ? frame_->name : "";
    info.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    info.dtype = std::string(tensor.dtype().name());
    info.order = scope_->order++;
    info.is_leaf = tensor.is_leaf();
    if (frame_) {
      index_ = static_cast<std::int64_t>(frame_->wanted.size());
      frame_->wanted.push_back(0);
    }

    action_ = scope_->policy->decide(info);
    if (info.is_leaf) action_ = Action::kKeep;  // held outside autograd: nothing to gain
    if (action_ == Action::kRecompute && !frame_) action_ = Action::kKeep;
    if (action_ == Action::kOffload &&
        static_cast<std::size_t>(bytes_) < scope_->options.offload_min_bytes) {
      action_ = Action::kKeep;
    }
    bool fell_back = false;
    std::int64_t copy_ns = 0;
    if (action_ == Action::kOffload) {
      const auto start = std::chrono::steady_clock::now();
      std::optional<at::Tensor> host = scope_->host.offload(tensor);
      copy_ns = elapsed_ns(start);
      if (host) {
        host_ = std::move(*host);
      } else {
        fell_back = true;  // the host pool is full: keep it, lose nothing
        action_ = Action::kKeep;
      }
    }
    if (action_ == Action::kRecompute) {
      frame_->wanted[index_] = 1;
    } else {
      frame_.reset();  // only a recomputed tensor needs its frame (and the inputs it holds)
    }
    if (action_ == Action::kKeep) kept_ = tensor;

    scope_->count([&](ActivationStats& s) {
      ++s.packed;
      s.offload_fallbacks += fell_back;
      switch (action_) {
        case Action::kKeep:
          ++s.tensors_kept;
          s.bytes_kept += bytes_;
          break;
        case Action::kOffload:
          ++s.tensors_offloaded;
          s.bytes_offloaded += bytes_;
          s.copy_bytes += bytes_;
          s.copy_ns += copy_ns;
          break;
        case Action::kRecompute:
          ++s.tensors_recomputed;
          s.bytes_recomputed += bytes_;
          break;
      }
    });
  }

  at::Tensor call_unpack_hook() override {
    at::Tensor tensor;
    std::int64_t copy_ns = 0;
    switch (action_) {
      case Action::kKeep:
        tensor = kept_;
        break;
      case Action::kOffload: {
        const auto start = std::chrono::steady_clock::now();
        tensor = HostStore::restore(host_);
        copy_ns = elapsed_ns(start);
        break;
      }
      case Action::kRecompute:
        tensor = frame_->take(index_);
        break;
    }
    scope_->count([&](ActivationStats& s) {
      ++s.unpacked;
      if (action_ == Action::kOffload) {
        s.copy_bytes += bytes_;
        s.copy_ns += copy_ns;
      }
    });
    return tensor;
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

ActivationStats ActivationScope::stats() const { return state_->stats(); }

}  // namespace actmem
