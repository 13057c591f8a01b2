// The saved-tensor hooks actmem gives autograd, the Engine that hands them out, and the scope that
// turns them on. See activation_scope.h and segment.h for the contracts.
#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <stdexcept>

#include "hooks/activation_scope.h"
#include "hooks/engine.h"
#include "hooks/install.h"
#include "hooks/scope_state.h"
#include "hooks/segment_frame.h"
#include "policy/policy_config.h"

namespace actmem {
namespace detail {
namespace {

thread_local std::shared_ptr<ScopeState> t_active_scope;

// Whether the backward unpacking a saved tensor may read its strides, not only its values: any
// but LibTorch's own derivative formulas (the generated TraceableFunction nodes), such as a custom
// Function's backward, code torch.compile generated (which asserts the strides its forward saw),
// or a read outside any backward (Note [Offloaded tensors come back laid out as they went]).
bool backward_reads_layout() {
  const std::shared_ptr<torch::autograd::Node> node = torch::autograd::get_current_node();
  return dynamic_cast<const torch::autograd::TraceableFunction*>(node.get()) == nullptr;
}

bool same_storage(const at::Tensor& a, const at::Tensor& b) {
  return a.has_storage() && b.has_storage() &&
         a.storage().unsafeGetStorageImpl() == b.storage().unsafeGetStorageImpl();
}

// Parameters and what autograd saves of them (weight.t() for a linear layer) live as long as the
// model does: sending them out frees nothing. Other tensors that need no grad (dropout masks,
// pooling indices) are activations like the rest.
bool held_by_the_model(const at::Tensor& tensor) {
  if (tensor.is_leaf() && tensor.requires_grad()) return true;
  if (!tensor.is_view()) return false;
  const at::TensorBase& base = tensor._base();
  return base.is_leaf() && base.requires_grad();
}

// One saved tensor under a scope: kept, offloaded to the host store, or left to its segment's
// rerun. Everything unpack needs is captured here at pack time (unpack runs on autograd's thread).
class ManagedHooks final : public torch::autograd::SavedVariableHooks {
 public:
  ManagedHooks(std::shared_ptr<ScopeState> scope, std::shared_ptr<SegmentFrame> frame)
      : scope_(std::move(scope)), entry_(std::make_shared<SavedEntry>()) {
    entry_->frame = std::move(frame);
  }

  void call_pack_hook(const at::Tensor& tensor) override {
    // The operators before this one have run: their offloads' copies can go.
    scope_->send_deferred_offloads(ScopeState::Deferred::kOfEarlierNodesOnThisThread);
    SavedEntry& e = *entry_;
    const std::shared_ptr<SegmentFrame>& frame = e.frame;
    SavedTensorInfo info;
    e.bytes = static_cast<std::int64_t>(tensor.numel()) * tensor.element_size();
    e.packed_at = std::chrono::steady_clock::now();
    e.version_counter = tensor.unsafeGetTensorImpl()->version_counter();
    e.version = e.version_counter.enabled() ? e.version_counter.current_version() : 0;
    e.dtype = tensor.scalar_type();
    e.device = tensor.device();
    if (!e.device.is_cpu()) {
      e.stream = c10::impl::getDeviceGuardImpl(e.device.type())->getStream(e.device);
    }
    info.bytes = e.bytes;
    info.segment = frame ? frame->name : "";
    info.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    info.dtype = std::string(tensor.dtype().name());
    HostStore* const host = scope_->bind(e.device);  // the first pack's device (see the Note)
    info.order = scope_->begin_pack(entry_);
    info.is_leaf = held_by_the_model(tensor);
    if (info.order == 0) info.device_bytes = scope_->memory().stats().allocated_bytes.current;
    bool segment_input = false;
    std::optional<std::size_t> exact_input;  // the input it is, same view at the same version
    if (frame) {
      for (std::size_t i = 0; i < frame->inputs.size(); ++i) {
        const at::Tensor& input = frame->inputs[i];
        if (!same_storage(input, tensor)) continue;
        segment_input = true;
        if (input.sizes() == tensor.sizes() && input.strides() == tensor.strides() &&
            input.storage_offset() == tensor.storage_offset() && input.dtype() == tensor.dtype() &&
            tensor._version() == frame->input_versions[i]) {
          exact_input = i;
        }
      }
    }

    Action action = scope_->policy().decide(info);
    if (info.is_leaf) action = Action::kKeep;  // the model holds it: nothing to gain
    if (action == Action::kRecompute && !frame) action = Action::kKeep;
    if (action == Action::kOffload &&
        (static_cast<std::size_t>(e.bytes) < scope_->options().offload_min_bytes ||
         host == nullptr || !host->can_hold(tensor))) {
      action = Action::kKeep;
    }
    if (frame) {
      e.index = frame->add_pack(action == Action::kRecompute);
      // A recomputed tensor needs its frame (and the inputs it holds); so does a kept one that
      // the pressure handler may drop instead of offloading (see ScopeState::settle).
      if (action == Action::kKeep && scope_->may_drop(info, segment_input)) {
        frame->droppable.push_back(entry_);
      } else if (action != Action::kRecompute) {
        if (action == Action::kKeep && exact_input)
          frame->kept_inputs.emplace_back(*exact_input, entry_);
        e.frame.reset();
      }
    }
    // Detached: autograd may hand us an op's own output, whose grad_fn owns these hooks; holding it
    // as it is would make a cycle that leaks the whole graph when it is dropped without a backward
    // (an exception in the forward, an evaluation with grad on). Unpack re-attaches grad_fn itself.
    // An offloaded one is held until its copy is queued (Note [An offload waits for the operator
    // that saved the tensor] in scope_state.h).
    // A recomputed one too, until its segment's forward returns (Note [A segment's forward may read
    // what it saved] in segment_frame.h).
    e.kept = tensor.detach();
    if (action == Action::kRecompute) frame->held_in_forward.push_back(entry_);
    e.action = action;
    scope_->record_pack(entry_, info, tensor, segment_input);
    e.sizes = std::move(info.shape);
    e.segment = std::move(info.segment);

    const std::int64_t bytes = e.bytes;
    scope_->count([&](ActivationStats& s) {
      ++s.packed;
      switch (action) {
        case Action::kKeep:
          ++s.tensors_kept;
          s.bytes_kept += bytes;
          break;
        case Action::kOffload:
          ++s.tensors_offloaded;
          s.bytes_offloaded += bytes;
          break;
        case Action::kRecompute:
          ++s.tensors_recomputed;
          s.bytes_recomputed += bytes;
          break;
      }
    });
    if (action == Action::kOffload) scope_->defer_offload(entry_);
  }

  at::Tensor call_unpack_hook() override {
    // Inside a segment's forward on this thread (a derivative the forward takes): its rerun will
    // take it too, through its own saved tensors.
    if (const std::shared_ptr<SegmentFrame>& running = forward_frame()) {
      running->read_in_forward = true;
    }
    check_version();
    scope_->send_deferred_offloads(ScopeState::Deferred::kAll);  // the forward's operators ran
    // Read the entry under its lock, but restore or rerun without it: either may allocate, and
    // an allocation may run the pressure handler, which looks at entries.
    Action action;
    at::Tensor tensor;
    std::shared_ptr<HostStore::Item> offloaded;
    {
      std::lock_guard<std::mutex> lock(entry_->mutex);
      action = entry_->action;
      tensor = entry_->kept;
      offloaded = entry_->offloaded;
    }
    if (action == Action::kRecompute && tensor.defined()) {
      // Read inside the segment's own forward, which still holds it (Note [A segment's forward may
      // read what it saved] in segment_frame.h): no backward has begun, and nothing came back.
      entry_->frame->read_in_forward = true;
      scope_->count([](ActivationStats& s) { ++s.unpacked; });
      return tensor;
    }
    if (action == Action::kOffload && offloaded) {
      tensor = scope_->host()->take(offloaded, backward_reads_layout());
    } else if (action == Action::kRecompute) {
      // Before the forward returned only when the pressure handler dropped a kept tensor of the
      // segment while it ran, or the forward threw and let go of what it held: a rerun cannot run
      // inside the forward (from the generators' state of that moment, with the random-number
      // watch not closed).
      if (!entry_->frame->forward_over) {
        throw std::runtime_error(
            "actmem: segment '" + entry_->segment +
            "' needs a tensor it saved for recompute before its forward returned (autograd::grad "
            "in the segment's function), and that tensor is gone: the budget's pressure dropped "
            "it, or the forward threw. A rerun cannot run before the forward has returned. Raise "
            "ACTMEM_BUDGET, or give actmem host memory to offload to (ACTMEM_HOST_BUDGET)");
      }
      tensor = entry_->frame->take(entry_->index);
      check_recomputed(tensor);
    }
    scope_->record_unpack(*entry_);
    // The step ends when the backward running this unpack returns. PyTorch's own engine (Python)
    // does not say when that is; actmem's does, but only on the thread that called backward, which
    // may hold no scope (a backward run on a worker thread): the callback serves both.
    scope_->end_step_with_backward(entry_->step);
    scope_->count([](ActivationStats& s) { ++s.unpacked; });
    return tensor;
  }

 private:
  // PyTorch's check, in PyTorch's words (it skips it for tensors saved through hooks): whatever
  // the policy did with the tensor, backward must not use one changed in place since it was saved.
  void check_version() const {
    const SavedEntry& e = *entry_;
    if (!e.version_counter.enabled()) return;
    const std::uint32_t current = e.version_counter.current_version();
    if (current == e.version) return;
    std::ostringstream message;
    message << "one of the variables needed for gradient computation has been modified by an "
               "inplace operation: ["
            << c10::DeviceTypeName(e.device.type()) << c10::toString(e.dtype) << "Type "
            << c10::IntArrayRef(e.sizes) << "] is at version " << current << "; expected version "
            << e.version << " instead.";
    if (!e.segment.empty()) message << " (actmem: it was saved in segment '" << e.segment << "')";
    message << " Hint: enable anomaly detection to find the operation that failed to compute "
               "its gradient, with torch.autograd.set_detect_anomaly(True).";
    TORCH_CHECK(false, message.str());
  }

  // A rerun that saved something else in this place (another shape or dtype: a module switched
  // to eval mode, an input of another size) must fail here, not inside a backward kernel.
  void check_recomputed(const at::Tensor& tensor) const {
    const SavedEntry& e = *entry_;
    if (tensor.sizes() == c10::IntArrayRef(e.sizes) && tensor.scalar_type() == e.dtype) return;
    std::ostringstream message;
    message << "actmem: segment '" << e.segment << "' saved a " << c10::toString(e.dtype) << " "
            << c10::IntArrayRef(e.sizes) << " tensor in its forward, but a "
            << c10::toString(tensor.scalar_type()) << " " << tensor.sizes()
            << " one in its place when rerun: its function must do the same work given the same "
               "inputs, RNG state and modules' training flags";
    e.frame->fail_rerun(message.str());
  }

  std::shared_ptr<ScopeState> scope_;
  std::shared_ptr<SavedEntry> entry_;
};

// A tensor saved while a segment is rerun in backward: handed to the frame. The rerun's graph is
// thrown away after it; but where the forward read back what it saved (Note [A segment's forward
// may read what it saved] in segment_frame.h), the rerun will too, and holds it while it runs
// (detached, as ManagedHooks holds its tensors).
class CaptureHooks final : public torch::autograd::SavedVariableHooks {
 public:
  explicit CaptureHooks(SegmentFrame& frame) : frame_(frame) {}
  void call_pack_hook(const at::Tensor& tensor) override {
    if (frame_.read_in_forward) held_ = tensor.detach();
    frame_.capture(tensor);
  }
  at::Tensor call_unpack_hook() override {
    if (!held_.defined()) {
      throw std::logic_error("actmem: a tensor saved by a segment's rerun was unpacked");
    }
    return held_;
  }

 private:
  SegmentFrame& frame_;
  at::Tensor held_;
};

}  // namespace

const std::shared_ptr<ScopeState>& active_scope() { return t_active_scope; }

void backward_finished() {
  forget_last_segment();
  if (t_active_scope) t_active_scope->end_step();
}

void backward_failed() {
  forget_last_segment();
  if (t_active_scope) t_active_scope->abort_step();
}

std::unique_ptr<torch::autograd::SavedVariableHooks> hooks_for_this_thread() {
  if (SegmentFrame* frame = capturing_frame()) return std::make_unique<CaptureHooks>(*frame);
  if (!t_active_scope) return nullptr;
  return std::make_unique<ManagedHooks>(t_active_scope, forward_frame());
}

}  // namespace detail

namespace {

std::unique_ptr<Policy> make_device_policy(const std::string& name, PolicyOptions options) {
  options.budget = [] { return device_memory().budget(); };
  // The CUDA copy engine copies on a side stream; the CPU build's copies run on the caller's.
  options.copies_overlap = managed_device() == c10::DeviceType::CUDA;
  return make_policy(name, options);
}

}  // namespace

std::unique_ptr<Policy> make_device_policy(const std::string& name, std::size_t offload_min_bytes,
                                           LogLevel log) {
  PolicyOptions options;
  options.offload_min_bytes = offload_min_bytes;
  options.log = log;
  return make_device_policy(name, std::move(options));
}

std::unique_ptr<Policy> make_device_policy(const PolicyConfig& config) {
  PolicyOptions options;
  options.offload_min_bytes = config.offload_min_bytes;
  options.log = config.log;
  options.host_capacity = config.host_budget;
  return make_device_policy(config.policy, std::move(options));
}

ActivationScope::ActivationScope(std::shared_ptr<Policy> policy, ScopeOptions options)
    : state_(std::make_shared<detail::ScopeState>(std::move(policy), options)),
      previous_(detail::t_active_scope) {
  state_->want_pressure_handler(true);
  detail::t_active_scope = state_;
}

ActivationScope::Pause::Pause(ActivationScope& scope) : scope_(scope) {
  if (detail::t_active_scope != scope_.state_) {
    throw std::logic_error(
        "actmem: ActivationScope::Pause: the scope is not the one active on this thread");
  }
  scope_.state_->want_pressure_handler(false);
  detail::t_active_scope = scope_.previous_;
}

ActivationScope::Pause::~Pause() {
  detail::t_active_scope = scope_.state_;
  scope_.state_->want_pressure_handler(true);
}

ScopeOptions ScopeOptions::from(const PolicyConfig& config) {
  ScopeOptions options;
  options.offload_min_bytes = config.offload_min_bytes;
  options.host_capacity = config.host_budget;
  options.prefetch_window = config.prefetch_window;
  options.log = config.log;
  return options;
}

std::unique_ptr<ActivationScope> ActivationScope::from_environment() {
  const PolicyConfig config = PolicyConfig::from_environment();
  return std::make_unique<ActivationScope>(make_device_policy(config), ScopeOptions::from(config));
}

ActivationScope::~ActivationScope() {
  state_->want_pressure_handler(false);
  detail::t_active_scope = std::move(previous_);
}

ActivationStats ActivationScope::stats() const { return state_->stats(); }

std::function<ActivationStats()> ActivationScope::stats_source() const {
  return [state = state_] { return state->stats(); };
}

std::optional<c10::Device> ActivationScope::device() const { return state_->device(); }

HostStore& ActivationScope::host_store() {
  // (bind() takes a CUDA device without an index for the current one.)
  return *state_->bind(c10::Device(managed_device()));
}

}  // namespace actmem
