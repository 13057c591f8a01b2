#include "hooks/segment.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>
#include <stdexcept>
#include <utility>

#include "hooks/out_of_memory.h"
#include "hooks/rng_use.h"
#include "hooks/segment_frame.h"

namespace actmem {
namespace detail {

thread_local std::shared_ptr<SegmentFrame> t_forward_frame;

namespace {

thread_local SegmentFrame* t_capturing_frame = nullptr;
// The frames whose mutex this thread holds in take() (more than one when a rerun reruns the
// segments before it, for a chain): the pressure handler must not try them again.
thread_local std::vector<SegmentFrame*> t_taking_frames;

bool taking(const SegmentFrame* frame) {
  return std::find(t_taking_frames.begin(), t_taking_frames.end(), frame) != t_taking_frames.end();
}

// Marks `frame` as held by this thread while it lives.
class Taking {
 public:
  explicit Taking(SegmentFrame* frame) { t_taking_frames.push_back(frame); }
  ~Taking() { t_taking_frames.pop_back(); }
  Taking(const Taking&) = delete;
  Taking& operator=(const Taking&) = delete;
};

// A tensor's version, 0 for one that keeps none (an inference tensor, made under inference mode).
std::int64_t version_of(const at::Tensor& tensor) {
  return tensor.is_inference() ? 0 : tensor._version();
}

// The last segment whose forward ended on this thread, with what it returned: a segment that
// starts next and takes one of those (the same tensor, unchanged since) is the next link of a
// chain. The weak references keep the addresses from being reused while they are compared.
struct LastSegment {
  std::weak_ptr<SegmentFrame> frame;
  std::uint64_t steps_ended = 0;  // its scope's count when it ended: a link stays within a step
  std::vector<std::pair<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>,
                        std::int64_t>>
      outputs;  // with its version when the segment returned it
};
thread_local LastSegment t_last_segment;

// Which output of the last segment `input` is, if it is one.
std::optional<std::size_t> last_output(const at::Tensor& input) {
  if (!input.defined()) return std::nullopt;
  for (std::size_t j = 0; j < t_last_segment.outputs.size(); ++j) {
    const auto& [weak, version] = t_last_segment.outputs[j];
    const auto output = weak.lock();
    if (output.get() == input.unsafeGetTensorImpl() && version_of(input) == version) return j;
  }
  return std::nullopt;
}

// The rerun's thread-local state: hooks that capture what it saves, and no forward frame (a
// segment called inside the rerun just runs). Undone however the rerun ends.
class CapturingGuard {
 public:
  explicit CapturingGuard(SegmentFrame& frame)
      : previous_capture_(t_capturing_frame), previous_forward_(std::move(t_forward_frame)) {
    t_capturing_frame = &frame;
    t_forward_frame = nullptr;
  }
  ~CapturingGuard() {
    t_capturing_frame = previous_capture_;
    t_forward_frame = std::move(previous_forward_);
  }
  CapturingGuard(const CapturingGuard&) = delete;
  CapturingGuard& operator=(const CapturingGuard&) = delete;

 private:
  SegmentFrame* previous_capture_;
  std::shared_ptr<SegmentFrame> previous_forward_;
};

}  // namespace

const std::shared_ptr<SegmentFrame>& forward_frame() { return t_forward_frame; }

void forget_last_segment() { t_last_segment = LastSegment{}; }
SegmentFrame* capturing_frame() { return t_capturing_frame; }

std::int64_t SegmentFrame::add_pack(bool want) {
  std::lock_guard<std::mutex> lock(mutex_);
  wanted_.push_back(want);
  return static_cast<std::int64_t>(wanted_.size()) - 1;
}

bool SegmentFrame::want_later(std::int64_t index) {
  // On the thread that takes from this frame, mutex_ is held already (try_lock would be undefined
  // behaviour): a rerun's allocation can call the pressure handler.
  if (taking(this)) return false;
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock() || materialized_ || reran_) return false;
  for (std::size_t i = 0; i < input_counters.size(); ++i) {
    if (input_changed(i)) return false;
  }
  wanted_[index] = 1;
  return true;
}

bool SegmentFrame::input_changed(std::size_t i) const {
  return input_counters[i].enabled() &&
         static_cast<std::int64_t>(input_counters[i].current_version()) != input_versions[i];
}

void SegmentFrame::read_inputs_through(std::vector<std::shared_ptr<SavedEntry>> entries) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (entries[i]) inputs[i] = at::Tensor();
  }
  input_entries_ = std::move(entries);
}

bool SegmentFrame::recomputes_any() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::find(wanted_.begin(), wanted_.end(), 1) != wanted_.end();
}

void SegmentFrame::capture(const at::Tensor& tensor) {
  // Saved after the stop was thrown: while it unwinds (a Python `finally`, a destructor), or by a
  // function that swallowed it, which the end of rerun() tells apart. Nothing more is needed.
  if (stop_thrown_) return;
  const std::int64_t index = capture_index_++;
  if (capturing_ && index < static_cast<std::int64_t>(wanted_.size()) && wanted_[index]) {
    recomputed_[index] = tensor.detach();
  }
  // Once the last tensor the rerun must produce is there, the rest of the segment need not run;
  // unless it draws random numbers, when it runs to the end for the generator check.
  if (index >= last_wanted_ && !context.drew()) {
    stop_thrown_ = true;
    throw StopRerun{};
  }
}

void SegmentFrame::let_go_of_held() {
  for (const std::weak_ptr<SavedEntry>& weak : held_in_forward) {
    if (const std::shared_ptr<SavedEntry> entry = weak.lock()) {
      std::lock_guard<std::mutex> lock(entry->mutex);
      if (entry->action == Action::kRecompute) entry->kept = at::Tensor();
    }
  }
  held_in_forward.clear();
}

void SegmentFrame::fail_rerun(const std::string& message) const {
  if (!ran_out_of_memory_) throw std::runtime_error(message);
  throw OutOfMemoryError(
      "actmem: segment '" + name +
          "' ran out of memory when rerun in backward, and its function caught the error and "
          "went on another way, so the rerun did not repeat the forward (" + message +
          "). Raise ACTMEM_BUDGET, let actmem offload (ACTMEM_HOST_BUDGET), or use a smaller "
          "batch",
      0, 0);
}

void SegmentFrame::throw_stop_swallowed() const {
  throw std::runtime_error(
      "actmem: segment '" + name +
      "' caught the exception actmem stops its rerun with (a catch (...) in its function, or a "
      "Python bare except, that did not rethrow it), and ran on: whatever it did then, the "
      "forward did not. Let exceptions the function does not handle itself pass, or keep this "
      "segment");
}

TensorList SegmentFrame::rerun_inputs() {
  for (std::size_t i = 0; i < input_counters.size(); ++i) {
    if (i < changed_by_forward.size() && changed_by_forward[i]) {
      throw std::runtime_error(
          "actmem: segment '" + name + "': input " + std::to_string(i) +
          " was modified in place by the segment's own forward, so it cannot be recomputed (a "
          "rerun would start from the changed values); keep or offload this segment, or change a "
          "copy of the input");
    }
    if (input_changed(i)) {
      // In PyTorch's words, as plain LibTorch reports an operator of the segment that saved it.
      TORCH_CHECK(false,
                  "one of the variables needed for gradient computation has been modified by an "
                  "inplace operation: input ",
                  i, " of segment '", name, "' is at version ",
                  input_counters[i].current_version(), "; expected version ", input_versions[i],
                  " instead. (actmem: it was modified in place after the segment ran, so the "
                  "segment cannot be recomputed from it; clone it, or keep this segment)");
    }
  }
  TensorList args = inputs;
  for (std::size_t i = 0; i < links.size(); ++i) {
    // A kept tensor of this segment that saved the input exactly is cheaper than a rerun.
    const bool read_through = i < input_entries_.size() && input_entries_[i] != nullptr;
    if (!links[i] || args[i].defined() || read_through) continue;
    rerun_run_behind(links[i]->producer, links[i]->output);
    args[i] = links[i]->producer->output_for_chain(links[i]->output).detach();
    if (input_requires_grad[i]) args[i].requires_grad_(true);
  }
  for (std::size_t i = 0; i < input_entries_.size(); ++i) {
    if (!input_entries_[i]) continue;
    at::Tensor value;  // kept, or held until its offload's copy is queued
    std::shared_ptr<HostStore::Item> offloaded;
    {
      std::lock_guard<std::mutex> lock(input_entries_[i]->mutex);
      value = input_entries_[i]->kept;
      offloaded = input_entries_[i]->offloaded;
    }
    if (!offloaded && !value.defined()) {
      throw std::logic_error("actmem: segment '" + name + "': input " + std::to_string(i) +
                             " is gone from the saved tensor it was read through");
    }
    args[i] = (offloaded ? scope->host()->copy_back(*offloaded) : value).detach();
    if (input_requires_grad[i]) args[i].requires_grad_(true);
  }
  return args;
}

void SegmentFrame::rerun(bool outputs) {
  const TensorList args = rerun_inputs();
  const auto start = std::chrono::steady_clock::now();
  const auto packs = static_cast<std::int64_t>(wanted_.size());
  // A rerun for the chain after one for take() (a graph that took from this segment before the
  // next one reran) brings back only the outputs: what is still to be taken is here. A rerun for
  // take() always captures (a second backward may want a tensor the first one took already).
  capturing_ = !outputs || !materialized_;
  if (capturing_) recomputed_.assign(wanted_.size(), at::Tensor());
  capture_index_ = 0;
  stop_thrown_ = false;
  last_wanted_ = -1;
  for (std::int64_t i = 0; capturing_ && i < packs; ++i) {
    if (wanted_[i]) last_wanted_ = i;
  }
  if (outputs) last_wanted_ = std::numeric_limits<std::int64_t>::max();  // run to the end
  const std::uint64_t refusals = detail::out_of_memory_errors_on_this_thread();
  {
    ForwardContext::Rerun in_force(context);
    CapturingGuard capturing(*this);
    bool stopped = false;
    try {
      const TensorList returned = fn(args);
      if (outputs) {
        chain_outputs_.assign(returned.size(), at::Tensor());
        for (std::size_t j = 0; j < returned.size() && j < outputs_linked.size(); ++j) {
          if (outputs_linked[j]) chain_outputs_[j] = returned[j].detach();
        }
      }
    } catch (const StopRerun&) {
      stopped = true;
    }
    if (!stopped && stop_thrown_) throw_stop_swallowed();
    if (!stopped) in_force.finish(name);
  }
  ran_out_of_memory_ = detail::out_of_memory_errors_on_this_thread() != refusals;
  const std::int64_t ns = elapsed_ns(start);
  scope->count([ns](ActivationStats& s) {
    ++s.recomputations;
    s.recompute_ns += ns;
  });
  reran_ = true;
  if (!capturing_) return;
  outstanding_ = 0;
  for (std::int64_t i = 0; i < packs; ++i) {
    if (!wanted_[i]) continue;
    if (!recomputed_[i].defined()) {
      fail_rerun("actmem: segment '" + name + "' saved " + std::to_string(packs) +
                 " tensors in its forward but only " + std::to_string(capture_index_) +
                 " when rerun: its function must do the same work given the same inputs and RNG "
                 "state");
    }
    ++outstanding_;
  }
  materialized_ = true;
}

at::Tensor SegmentFrame::take(std::int64_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  Taking taking(this);
  if (!materialized_ || !recomputed_[index].defined()) {
    // Taken already, and the memory handed out is still alive (a Function that reads its saved
    // tensors twice in one backward): the same again, rather than a second rerun.
    if (static_cast<std::size_t>(index) < taken_.size() && taken_[index]) {
      const Taken& taken = *taken_[index];
      if (c10::intrusive_ptr<c10::StorageImpl> storage = taken.storage.lock()) {
        // Over the same memory, as a read of a tensor saved without hooks gets it (a change the
        // first read made in place included).
        return at::empty({0}, taken.options)
            .set_(c10::Storage(std::move(storage)), taken.offset, taken.sizes, taken.strides);
      }
    }
    rerun(/*outputs=*/false);
  }
  at::Tensor tensor = std::move(recomputed_[index]);
  recomputed_[index] = at::Tensor();
  if (taken_.size() < recomputed_.size()) taken_.resize(recomputed_.size());
  if (tensor.has_storage()) {
    taken_[index] = Taken{tensor.storage().getWeakStorageImpl(), tensor.options(),
                          tensor.sizes().vec(), tensor.strides().vec(), tensor.storage_offset()};
  }
  if (--outstanding_ == 0) materialized_ = false;  // a second backward reruns again
  return tensor;
}

void SegmentFrame::rerun_run_behind(std::shared_ptr<SegmentFrame> producer, std::size_t output) {
  std::vector<std::pair<std::shared_ptr<SegmentFrame>, std::size_t>> run;  // newest first
  while (producer && !producer->has_output_for_chain(output)) {
    std::optional<Link> behind = producer->link_to_rerun();
    run.emplace_back(std::move(producer), output);
    if (!behind) break;
    producer = std::move(behind->producer);
    output = behind->output;
  }
  // The newest needs no preparing: output_for_chain reruns it, one level down.
  for (std::size_t k = run.size(); k-- > 1;) run[k].first->prepare_output_for_chain(run[k].second);
}

bool SegmentFrame::has_output_for_chain(std::size_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  return index < chain_outputs_.size() && chain_outputs_[index].defined();
}

std::optional<SegmentFrame::Link> SegmentFrame::link_to_rerun() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::size_t i = 0; i < links.size(); ++i) {
    const bool read_through = i < input_entries_.size() && input_entries_[i] != nullptr;
    if (links[i] && !inputs[i].defined() && !read_through) return links[i];
  }
  return std::nullopt;
}

void SegmentFrame::prepare_output_for_chain(std::size_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  Taking taking(this);
  if (index >= chain_outputs_.size() || !chain_outputs_[index].defined()) rerun(/*outputs=*/true);
}

at::Tensor SegmentFrame::output_for_chain(std::size_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  Taking taking(this);
  if (index >= chain_outputs_.size() || !chain_outputs_[index].defined()) rerun(/*outputs=*/true);
  if (index >= chain_outputs_.size() || !chain_outputs_[index].defined()) {
    throw std::runtime_error("actmem: segment '" + name + "' returned no output " +
                             std::to_string(index) +
                             " when rerun for the segment after it: its function must return "
                             "the same outputs given the same inputs");
  }
  return std::exchange(chain_outputs_[index], at::Tensor());
}

}  // namespace detail

TensorList segment(const std::string& name, const SegmentFn& fn, const TensorList& inputs,
                   torch::nn::Module* module) {
  // The adapter is made only where a frame keeps it.
  const std::shared_ptr<detail::ScopeState>& scope = detail::active_scope();
  if (!scope || detail::capturing_frame() != nullptr) return fn(inputs);
  return segment(name, fn, inputs, torch_segment_module(module));
}

TensorList segment(const std::string& name, const SegmentFn& fn, const TensorList& inputs,
                   std::shared_ptr<SegmentModule> module) {
  const std::shared_ptr<detail::ScopeState>& scope = detail::active_scope();
  // Outside a scope or inside a rerun: just run it; so without grad mode (no_grad, inference
  // mode), where autograd saves nothing. Inside another segment's forward: flattened into it,
  // which restores this one's module too when it reruns.
  if (!scope || detail::capturing_frame() != nullptr || !c10::GradMode::is_enabled()) {
    return fn(inputs);
  }
  if (const std::shared_ptr<detail::SegmentFrame>& outer = detail::forward_frame()) {
    outer->context.add_module(std::move(module));
    return fn(inputs);
  }
  auto frame = std::make_shared<detail::SegmentFrame>();
  frame->name = name;
  frame->fn = fn;
  frame->context.add_module(std::move(module));
  frame->scope = scope;
  frame->links.resize(inputs.size());
  // A policy that never reruns has no use for links: the last segment is forgotten.
  const std::shared_ptr<detail::SegmentFrame> last =
      scope->policy().may_recompute() ? detail::t_last_segment.frame.lock() : nullptr;
  const bool linked = last && last->scope == scope &&
                      detail::t_last_segment.steps_ended == scope->steps_ended();
  std::vector<std::uint64_t> link_storages;  // for the profile
  bool dropped_link = false;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& input = inputs[i];
    if (input.defined()) scope->bind(input.device());  // (Note [The device a scope serves])
    if (!input.defined()) {  // an optional input left out (a mask): the rerun gets none either
      frame->input_requires_grad.push_back(false);
      frame->input_versions.push_back(0);
      frame->input_counters.emplace_back(c10::VariableVersion::DISABLED);
      frame->inputs.emplace_back();
      continue;
    }
    frame->input_requires_grad.push_back(input.requires_grad());
    frame->input_versions.push_back(detail::version_of(input));
    frame->input_counters.push_back(input.unsafeGetTensorImpl()->version_counter());
    const std::optional<std::size_t> output = linked ? detail::last_output(input) : std::nullopt;
    if (output) {
      frame->chain_position = last->chain_position + 1;
      SegmentLink link;
      link.segment = name;
      link.producer = last->name;
      link.position = frame->chain_position;
      link.bytes = input.has_storage() ? static_cast<std::int64_t>(input.storage().nbytes()) : 0;
      if (input.has_storage()) link_storages.push_back(detail::storage_id(input));
      if (scope->policy().drops_input(link)) {
        dropped_link = true;
        frame->links[i] = detail::SegmentFrame::Link{last, *output};
        if (last->outputs_linked.size() <= *output) last->outputs_linked.resize(*output + 1);
        last->outputs_linked[*output] = 1;
        frame->inputs.emplace_back();
        continue;
      }
    }
    at::Tensor saved = input.detach();
    if (input.requires_grad()) saved.requires_grad_(true);
    frame->inputs.push_back(saved);
  }
  detail::t_forward_frame = frame;
  struct Reset {
    ~Reset() { detail::t_forward_frame = nullptr; }
  } reset;
  // Offloads waiting for an operator before the segment: copied now, outside its bracket.
  scope->send_deferred_offloads(detail::ScopeState::Deferred::kOnThisThread);
  // The profile's bracket, if the policy wants one (a plain id: g++ 12 under -fsanitize=thread
  // took the optional's payload for uninitialized where the flag guarded it).
  std::uint64_t bracket = 0;
  bool bracketed = false;
  if (const std::optional<std::uint64_t> begun = scope->begin_segment(name)) {
    bracket = *begun;
    bracketed = true;
  }
  if (bracketed && !link_storages.empty()) {
    scope->link_segment(bracket, last->name, std::move(link_storages), dropped_link);
  }
  const auto start = std::chrono::steady_clock::now();
  TensorList outputs;
  {
    // Only a rerun needs the generator's state and whether the forward drew random numbers.
    std::optional<RngUseWatch> watch;
    if (scope->policy().may_recompute()) {
      frame->context.capture_generator();
      frame->context.capture_buffers();
      watch.emplace();
    }
    try {
      outputs = fn(inputs);
      // (Inside: reading the generators' states allocates, which can fail.)
      if (watch) frame->context.forward_ended(watch->drew(), watch->generators_given());
    } catch (...) {
      if (bracketed) scope->end_segment(bracket);
      frame->let_go_of_held();  // whatever still holds the partial graph holds no more than that
      throw;
    }
    scope->send_deferred_offloads(detail::ScopeState::Deferred::kOnThisThread);
  }
  if (bracketed) scope->end_segment(bracket);
  for (std::size_t i = 0; i < frame->input_counters.size(); ++i) {
    frame->changed_by_forward.push_back(frame->input_changed(i));
  }
  frame->forward_ns = detail::elapsed_ns(start);
  frame->forward_over = true;
  scope->settle(*frame);
  detail::t_last_segment.frame = frame;
  detail::t_last_segment.steps_ended = scope->steps_ended();
  detail::t_last_segment.outputs.clear();
  for (const at::Tensor& output : outputs) {
    detail::t_last_segment.outputs.emplace_back(output.getIntrusivePtr(),
                                                detail::version_of(output));
  }
  return outputs;
}

at::Tensor segment(const std::string& name, torch::nn::Module& module,
                   const std::function<at::Tensor(const at::Tensor&)>& fn,
                   const at::Tensor& input) {
  return segment(
      name, [fn](const TensorList& in) -> TensorList { return {fn(in[0])}; }, {input}, &module)[0];
}

}  // namespace actmem
