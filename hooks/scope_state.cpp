#include "hooks/scope_state.h"

#include <ATen/ATen.h>
#include <ATen/SequenceNumber.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <unordered_map>

#include "hooks/install.h"
#include "hooks/segment_frame.h"

namespace actmem::detail {

namespace {

// CUPTI where the device is CUDA (kernels finish after the call that launches them returns),
// clocks elsewhere or when CUPTI cannot be had (it says why under ACTMEM_LOG).
std::unique_ptr<SegmentTimer> make_segment_timer(LogLevel log) {
  if (managed_device() == c10::DeviceType::CUDA) {
    std::string why;
    if (std::unique_ptr<SegmentTimer> cupti = make_cupti_timer(&why)) return cupti;
    if (log != LogLevel::kOff) {
      std::fprintf(stderr, "actmem: segment times from clocks, not CUPTI: %s\n", why.c_str());
    }
  }
  return make_clock_timer();
}

}  // namespace

// Under pressure a kept tensor may go even below the offload minimum (a failed step costs more
// than a small copy), but not the tiniest: per-channel statistics and the like free nothing worth
// a copy.
constexpr std::size_t kEvictMinBytes = 16 * 1024;

ScopeState::ScopeState(std::shared_ptr<Policy> policy, ScopeOptions options)
    : policy_(std::move(policy)), options_(options) {
  if (policy_->wants_profile()) {
    timer_ = make_segment_timer(options_.log);
    timer_sees_copies_ = std::string(timer_->name()) != "clock";
  }
}

ScopeState::~ScopeState() {
  stop_trace();
  want_pressure_handler(false);
}

HostStore* ScopeState::bind(c10::Device device) {
  if (HostStore* store = host()) return store;
  if (device.type() != managed_device()) return nullptr;
  std::lock_guard<std::mutex> lock(bind_mutex_);
  if (HostStore* store = host()) return store;  // another thread bound it first
  if (device.is_cuda() && !device.has_index()) {
    device = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice();
  }
  // Both made before either is published: a failure leaves the scope unbound, to try again.
  alloc::CachingAllocator& memory = device_memory(device);
  host_ = std::make_unique<HostStore>(
      HostStoreOptions{options_.host_capacity, options_.prefetch_window}, device);
  device_ = device;
  memory_.store(&memory, std::memory_order_release);
  host_ptr_.store(host_.get(), std::memory_order_release);
  update_pressure_handler();
  return host_.get();
}

alloc::CachingAllocator& ScopeState::memory() {
  alloc::CachingAllocator* served = memory_.load(std::memory_order_acquire);
  return served ? *served : device_memory();
}

void ScopeState::want_pressure_handler(bool wanted) {
  std::lock_guard<std::mutex> lock(bind_mutex_);
  pressure_handler_wanted_ = wanted;
  update_pressure_handler();
}

void ScopeState::update_pressure_handler() {
  alloc::CachingAllocator* served = memory_.load(std::memory_order_acquire);
  const bool wanted = pressure_handler_wanted_ && served != nullptr &&
                      (policy_->evicts_under_pressure() || policy_->may_offload());
  if (wanted == pressure_handler_.has_value()) return;
  if (!wanted) {
    served->remove_pressure_handler(*pressure_handler_);
    pressure_handler_.reset();
    return;
  }
  std::weak_ptr<ScopeState> weak = weak_from_this();
  pressure_handler_ = served->add_pressure_handler([weak](std::size_t bytes) {
    const std::shared_ptr<ScopeState> state = weak.lock();
    return state ? state->relieve(bytes) : 0;
  });
}

ActivationStats ScopeState::stats() {
  ActivationStats stats;
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats = stats_;
  }
  if (const HostStore* store = host()) stats.transfers = store->stats();
  return stats;
}

std::int64_t ScopeState::begin_pack(const std::shared_ptr<SavedEntry>& entry) {
  std::lock_guard<std::mutex> lock(step_mutex_);
  const bool abandoned =
      in_step_ && !step_entries_.empty() &&
      std::all_of(step_entries_.begin(), step_entries_.end(),
                  [](const std::weak_ptr<SavedEntry>& e) { return e.expired(); });
  if (abandoned && timer_) {
    // Its brackets that are closed are worth nothing; an open one is this pack's own segment.
    const auto closed = [this](const auto& by_bracket) {
      return open_segments_.count(by_bracket.first) == 0;
    };
    segment_names_.erase(std::remove_if(segment_names_.begin(), segment_names_.end(), closed),
                         segment_names_.end());
    const auto forget_closed = [&closed](auto& by_bracket) {
      for (auto it = by_bracket.begin(); it != by_bracket.end();) {
        it = closed(*it) ? by_bracket.erase(it) : std::next(it);
      }
    };
    forget_closed(segment_links_);
    forget_closed(segment_end_events_);
    timer_->collect();  // an open bracket still counts when it closes
  }
  if (!in_step_ || abandoned) {
    in_step_ = true;
    ++step_;
    next_order_ = 0;
    step_start_ = std::chrono::steady_clock::now();
    profile_ = StepProfile{};
    detailed_ = true;  // until the policy says otherwise, after this pack's decision
    step_evictions_ = 0;
    step_refusals_ = 0;
    backward_began_ = false;
    step_entries_.clear();
    step_storages_.clear();
    // Entries of earlier steps that autograd has freed: forget them.
    evictable_.erase(std::remove_if(evictable_.begin(), evictable_.end(),
                                    [](const std::weak_ptr<SavedEntry>& e) { return e.expired(); }),
                     evictable_.end());
  }
  entry->step = step_;
  step_entries_.push_back(entry);
  return next_order_++;
}

// The policy reads the allocator's overhead from the reserved bytes of a profiled step; segments
// that work before the scope left cached (another model's, a larger batch's) would count as the
// step's own, and a plan under a budget would aim far too low. So before the scope's first
// profiled step begins (before its first segment's timer starts, or at its first pack) the cache
// is emptied: free segments only, live tensors stay. Once per scope: emptying before every
// profiled step would, with shapes that keep changing (sequence lengths), release the cache
// every step (on CUDA, a synchronising cudaFree each time). Later shapes are profiled with the
// scope's own cache, which only makes their first plan err on the safe side. A failure to
// release is reported, not thrown: it costs the profile accuracy, not the step.
void ScopeState::flush_cache_before_first_profile() {
  if (cache_flushed_) return;
  cache_flushed_ = true;
  try {
    memory().empty_cache();
  } catch (const std::exception& error) {
    std::fprintf(stderr,
                 "actmem: emptying the allocator's cache before the first profiled step failed "
                 "(%s); the profile may count cached segments as the allocator's overhead\n",
                 error.what());
  }
}

void ScopeState::start_trace() {
  // A step begun before the scope served a device traced the current one's allocator: not any more.
  if (owns_trace_ && traced_ != &memory()) stop_trace();
  traced_ = &memory();
  alloc::CachingAllocator& device = *traced_;
  if (!device.trace_enabled()) {
    device.set_trace_enabled(true);
    owns_trace_ = true;
  }
  if (owns_trace_) device.clear_trace();  // what an abandoned step left
  trace_start_ = device.trace_size();
  event_trace_positions_.clear();
}

void ScopeState::stop_trace() {
  if (!owns_trace_) return;
  traced_->set_trace_enabled(false);
  traced_->clear_trace();
  owns_trace_ = false;
}

void ScopeState::push_event(const alloc::AllocatorStats& device) {
  profile_.levels.push_back(device.allocated_bytes.current);
  profile_.reserved_peak_bytes =
      std::max(profile_.reserved_peak_bytes, device.reserved_bytes.current);
  profile_.event_ns.push_back(elapsed_ns(step_start_));
  event_trace_positions_.push_back(traced_->trace_size());
}

std::vector<std::int64_t> ScopeState::peaks_between_events() {
  // Replays the allocations and frees the trace recorded after each event, until the next: the
  // most they added to the event's level (a free subtracts what its allocation added, or the
  // block's size for one allocated before the step).
  alloc::CachingAllocator& device = *traced_;
  const std::vector<alloc::TraceEntry> entries = device.trace(trace_start_);
  if (owns_trace_) device.clear_trace();
  std::vector<std::int64_t> peaks = profile_.levels;
  std::unordered_map<std::uintptr_t, std::int64_t> sizes;
  for (std::size_t e = 0; e < peaks.size(); ++e) {
    const std::size_t first = event_trace_positions_[e] - trace_start_;
    const std::size_t last =
        e + 1 < peaks.size() ? event_trace_positions_[e + 1] - trace_start_ : entries.size();
    std::int64_t running = 0, most = 0;
    for (std::size_t i = first; i < std::min(last, entries.size()); ++i) {
      const alloc::TraceEntry& entry = entries[i];
      if (entry.action == alloc::TraceEntry::Action::kAlloc) {
        sizes[entry.address] = static_cast<std::int64_t>(entry.bytes);
        running += static_cast<std::int64_t>(entry.bytes);
        most = std::max(most, running);
      } else if (entry.action == alloc::TraceEntry::Action::kFree) {
        const auto it = sizes.find(entry.address);
        if (it == sizes.end()) {
          running -= static_cast<std::int64_t>(entry.bytes);
        } else {
          running -= it->second;
          sizes.erase(it);
        }
      }
    }
    peaks[e] += most;
  }
  return peaks;
}

void ScopeState::record_pack(const std::shared_ptr<SavedEntry>& entry, const SavedTensorInfo& info,
                             const at::Tensor& tensor, bool segment_input) {
  const bool profile = policy_->wants_profile();
  // (Only tensors of the served device: the pressure comes from its allocator.)
  const bool evicts = policy_->evicts_under_pressure() && entry->action == Action::kKeep &&
                      !info.is_leaf && static_cast<std::size_t>(info.bytes) >= kEvictMinBytes &&
                      device() == std::optional<c10::Device>(entry->device);
  if (!profile && !evicts) return;
  // Asked outside step_mutex_: the policy takes its own lock, and may read the allocator's.
  const std::optional<bool> detailed =
      profile && info.order == 0 ? std::optional<bool>(policy_->profiles_step()) : std::nullopt;
  std::lock_guard<std::mutex> lock(step_mutex_);
  if (detailed && entry->step == step_) {
    detailed_ = *detailed;
    profile_.detailed = *detailed;
    if (detailed_) {
      flush_cache_before_first_profile();
      if (timer_) start_trace();
    }
  }
  if (evicts) evictable_.push_back(entry);
  if (!profile || !detailed_ || entry->step != step_) return;
  const alloc::AllocatorStats device = memory().stats();
  ProfiledTensor t;
  t.order = info.order;
  t.bytes = info.bytes;
  t.segment = info.segment;
  step_storages_.emplace_back();
  if (tensor.has_storage()) {  // sparse and opaque tensors have none: they never count as freeable
    t.storage = storage_id(tensor);
    t.storage_bytes = static_cast<std::int64_t>(tensor.storage().nbytes());
    step_storages_.back() = tensor.storage().getWeakStorageImpl();
  }
  t.is_leaf = info.is_leaf;
  // Set by this pack; changed only by an eviction (registered below) or a deferred offload kept
  // instead (keep_instead).
  t.action = entry->action;
  t.segment_input = segment_input;
  t.pack_event = static_cast<std::int64_t>(profile_.levels.size());
  push_event(device);
  entry->profile_index = static_cast<std::int64_t>(profile_.tensors.size());
  profile_.tensors.push_back(t);
}

void ScopeState::mark_freeable() {
  // A storage sent out at pack is freeable when it is gone: nothing but the saved tensor held it.
  for (std::size_t i = 0; i < profile_.tensors.size(); ++i) {
    ProfiledTensor& t = profile_.tensors[i];
    if (t.action != Action::kKeep && step_storages_[i]) t.freeable = step_storages_[i]->expired();
  }
  // A kept storage is freeable when every reference to it is a kept tensor of this step: its
  // reference count equals the number of kept tensors over it.
  std::unordered_map<const void*, long> kept_over;
  std::vector<std::pair<std::int64_t, at::Tensor>> kept;
  for (const std::weak_ptr<SavedEntry>& weak : step_entries_) {
    const std::shared_ptr<SavedEntry> entry = weak.lock();
    if (!entry) continue;
    std::lock_guard<std::mutex> lock(entry->mutex);
    if (entry->profile_index < 0 || entry->action != Action::kKeep || !entry->kept.defined() ||
        !entry->kept.has_storage()) {
      continue;
    }
    kept.emplace_back(entry->profile_index, entry->kept);
    ++kept_over[entry->kept.storage().unsafeGetStorageImpl()];
  }
  for (const auto& [index, tensor] : kept) {
    const long holders = static_cast<long>(tensor.storage().use_count());
    profile_.tensors[index].freeable =
        holders == kept_over[tensor.storage().unsafeGetStorageImpl()];
  }
}

void ScopeState::record_unpack(const SavedEntry& entry) {
  if (!policy_->wants_profile() || entry.profile_index < 0) return;  // (light steps record none)
  std::lock_guard<std::mutex> lock(step_mutex_);
  if (entry.step != step_ || !in_step_ || !detailed_) return;
  const alloc::AllocatorStats device = memory().stats();
  if (!backward_began_) {
    backward_began_ = true;
    mark_freeable();
  }
  ProfiledTensor& t = profile_.tensors[entry.profile_index];
  if (t.unpack_event >= 0) return;  // a second unpack (retain_graph): the first one counts
  t.unpack_event = static_cast<std::int64_t>(profile_.levels.size());
  push_event(device);
}

std::optional<std::uint64_t> ScopeState::begin_segment(const std::string& name) {
  if (!timer_) return std::nullopt;
  bool in_step;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    in_step = in_step_;
    if (in_step && !detailed_) return std::nullopt;
  }
  // Between steps (the next step's first segments begin before its first pack), the policy says.
  if (!in_step && !policy_->profiles_step()) return std::nullopt;
  std::uint64_t id;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (!in_step) flush_cache_before_first_profile();  // a profiled step begins: before its timer
    id = next_segment_id_++;
    segment_names_.emplace_back(id, name);
    open_segments_.insert(id);
  }
  timer_->begin(id);
  return id;
}

void ScopeState::end_segment(std::uint64_t id) {
  timer_->end(id);
  std::lock_guard<std::mutex> lock(step_mutex_);
  open_segments_.erase(id);
  segment_end_events_[id] = static_cast<std::int64_t>(profile_.levels.size());
}

void ScopeState::link_segment(std::uint64_t id, const std::string& producer,
                              std::vector<std::uint64_t> storages, bool dropped) {
  std::lock_guard<std::mutex> lock(step_mutex_);
  segment_links_[id] = {producer, std::move(storages), dropped};
}

void ScopeState::abort_step() {
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (in_step_) steps_ended_.fetch_add(1, std::memory_order_acq_rel);
    in_step_ = false;
    profile_ = StepProfile{};
    step_storages_.clear();
    segment_names_.clear();
    segment_links_.clear();
    segment_end_events_.clear();
    stop_trace();
  }
  if (timer_) timer_->collect();  // the step's times are worth nothing either
}

void ScopeState::end_step_with_backward(std::uint64_t step) {
  // Called for every unpack: once the end is queued, nothing else is looked at or locked.
  if (end_queued_for_.load(std::memory_order_acquire) == step) return;
  // A backward for some inputs only (torch.autograd.grad, backward(inputs=...)) is taken for one
  // nested in the step, such as a gradient penalty's, and ends nothing: the next full one does.
  const auto* exec_info = torch::autograd::get_current_graph_task_exec_info();
  if (exec_info != nullptr && !exec_info->empty()) return;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (!in_step_ || step != step_ || end_queued_for_.load(std::memory_order_relaxed) == step) {
      return;
    }
    end_queued_for_.store(step, std::memory_order_release);
  }
  std::weak_ptr<ScopeState> weak = weak_from_this();
  try {
    torch::autograd::Engine::get_default_engine().queue_callback([weak, step] {
      if (const std::shared_ptr<ScopeState> scope = weak.lock()) scope->end_step(step);
    });
  } catch (const c10::Error&) {
    // Not inside a backward (the engine has no graph task on this thread): nothing ends.
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (end_queued_for_.load(std::memory_order_relaxed) == step) end_queued_for_.store(0);
  }
}

void ScopeState::defer_offload(const std::shared_ptr<SavedEntry>& entry) {
  std::lock_guard<std::mutex> lock(deferred_mutex_);
  deferred_.push_back({entry, std::this_thread::get_id(), at::sequence_number::peek()});
  deferred_count_.store(deferred_.size(), std::memory_order_release);
}

std::vector<std::shared_ptr<SavedEntry>> ScopeState::take_deferred(Deferred which) {
  std::vector<std::shared_ptr<SavedEntry>> taken;
  if (deferred_count_.load(std::memory_order_acquire) == 0) return taken;
  std::lock_guard<std::mutex> lock(deferred_mutex_);
  const std::thread::id thread = std::this_thread::get_id();
  const std::uint64_t node = at::sequence_number::peek();
  std::vector<DeferredOffload> later;
  for (DeferredOffload& deferred : deferred_) {
    const bool now = which == Deferred::kAll ||
                     (deferred.thread == thread &&
                      (which == Deferred::kOnThisThread || deferred.node < node));
    if (!now) {
      later.push_back(std::move(deferred));
    } else if (std::shared_ptr<SavedEntry> entry = deferred.entry.lock()) {
      taken.push_back(std::move(entry));
    }
  }
  deferred_.swap(later);
  deferred_count_.store(deferred_.size(), std::memory_order_release);
  return taken;
}

void ScopeState::send_deferred_offloads(Deferred which) {
  for (const std::shared_ptr<SavedEntry>& entry : take_deferred(which)) send_deferred(entry);
}

void ScopeState::keep_deferred_offloads() {
  for (const std::shared_ptr<SavedEntry>& entry : take_deferred(Deferred::kAll)) {
    keep_instead(entry, /*fell_back=*/false);
  }
}

std::shared_ptr<HostStore::Item> ScopeState::offload_after_its_operator(const SavedEntry& entry,
                                                                       const at::Tensor& tensor,
                                                                       bool now) {
  // The store orders its copy (and the dense copy of a tensor with gaps) after the current
  // stream: the packing one here, on its device, whatever this thread was doing.
  std::optional<c10::StreamGuard> packing_stream;
  if (entry.stream) packing_stream.emplace(*entry.stream);
  return host()->offload(tensor, now);
}

void ScopeState::send_deferred(const std::shared_ptr<SavedEntry>& pending) {
  SavedEntry& entry = *pending;
  at::Tensor tensor;
  {
    std::lock_guard<std::mutex> lock(entry.mutex);
    if (!entry.offload_waiting()) return;
    tensor = entry.kept;
  }
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<HostStore::Item> item;
  bool pool_refused = true;  // what a null item means, unless the copy itself failed
  try {
    item = offload_after_its_operator(entry, tensor, /*now=*/false);
  } catch (const std::exception&) {
    // No room on the device for a dense copy of a tensor with gaps, say: the tensor stays.
    pool_refused = false;
  }
  const std::int64_t copy_ns = elapsed_ns(start);
  tensor = at::Tensor();
  if (!item) {  // the host pool is full: keep it, lose nothing
    keep_instead(pending, /*fell_back=*/true, pool_refused);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(entry.mutex);
    entry.offloaded = std::move(item);
    entry.kept = at::Tensor();
  }
  std::lock_guard<std::mutex> lock(step_mutex_);
  if (ProfiledTensor* t = profiled(entry); t != nullptr && !timer_sees_copies_) {
    t->pack_copy_ns += copy_ns;  // clocks count the copy in the segment
  }
}

void ScopeState::keep_instead(const std::shared_ptr<SavedEntry>& kept, bool fell_back,
                              bool pool_refused) {
  SavedEntry& entry = *kept;
  {
    std::lock_guard<std::mutex> lock(entry.mutex);
    if (!entry.offload_waiting()) return;
    entry.action = Action::kKeep;
  }
  if (pool_refused) policy_->offload_refused();
  const std::int64_t bytes = entry.bytes;
  count([bytes, fell_back](ActivationStats& s) {
    s.offload_fallbacks += fell_back;
    --s.tensors_offloaded;
    s.bytes_offloaded -= bytes;
    ++s.tensors_kept;
    s.bytes_kept += bytes;
  });
  std::lock_guard<std::mutex> lock(step_mutex_);
  if (pool_refused && entry.step == step_ && in_step_) ++step_refusals_;
  if (ProfiledTensor* t = profiled(entry)) t->action = Action::kKeep;
  // As a tensor kept at pack: the pressure handler may send it out later (not drop it: an
  // offloaded entry holds no frame).
  if (policy_->evicts_under_pressure() && static_cast<std::size_t>(bytes) >= kEvictMinBytes) {
    evictable_.push_back(kept);
  }
}

ProfiledTensor* ScopeState::profiled(const SavedEntry& entry) {
  const std::int64_t row = entry.profile_index;
  if (row < 0 || entry.step != step_ || row >= static_cast<std::int64_t>(profile_.tensors.size())) {
    return nullptr;
  }
  return &profile_.tensors[static_cast<std::size_t>(row)];
}

void ScopeState::end_step(std::optional<std::uint64_t> only) {
  keep_deferred_offloads();
  StepProfile profile;
  std::vector<std::pair<std::uint64_t, std::string>> segments;
  std::map<std::uint64_t, Link> links;
  std::map<std::uint64_t, std::int64_t> end_events;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (!in_step_) return;  // a backward with nothing saved under this scope
    if (only && *only != step_) return;
    in_step_ = false;
    steps_ended_.fetch_add(1, std::memory_order_acq_rel);
    step_storages_.clear();
    if (policy_->wants_profile()) {
      profile_.step_ns = elapsed_ns(step_start_);
      profile_.reserved_peak_bytes =
          std::max(profile_.reserved_peak_bytes, memory().stats().reserved_bytes.current);
      profile_.evictions = step_evictions_;
      profile_.offload_refusals = step_refusals_;
      if (detailed_) profile_.peaks = peaks_between_events();
      stop_trace();  // until the next profiled step: summaries record none
      profile = std::move(profile_);
      profile_ = StepProfile{};
      segments.swap(segment_names_);
      links.swap(segment_links_);
      end_events.swap(segment_end_events_);
    }
  }
  count([](ActivationStats& s) { ++s.steps; });
  if (!policy_->wants_profile()) return;
  if (!profile.detailed) {
    // A bracket begun before the policy chose a summary (a step of another shape) is discarded.
    if (!segments.empty()) timer_->collect();
    policy_->end_step(profile);
    return;
  }
  SegmentTimes times = timer_->collect();
  for (const auto& [id, name] : segments) {
    ProfiledSegment segment{name, times.forward_ns[id], "", {}, false};
    if (const auto link = links.find(id); link != links.end()) {
      segment.producer = link->second.producer;
      segment.link_storages = link->second.storages;
      segment.dropped_link = link->second.dropped;
    }
    if (const auto end = end_events.find(id); end != end_events.end()) {
      segment.end_event = std::min<std::int64_t>(
          end->second, static_cast<std::int64_t>(profile.levels.size()));
    }
    profile.segments.push_back(std::move(segment));
  }
  if (times.dropped_records > 0 && options_.log != LogLevel::kOff) {
    std::fprintf(stderr, "actmem: %s lost %lld records: this step's segment times undercount\n",
                 timer_->name(), static_cast<long long>(times.dropped_records));
  }
  // The device's own copies, where the timer sees them (CUPTI), else the host store's probe.
  constexpr std::int64_t kEnoughCopyBytes = 1 << 20;
  profile.copy_bytes_per_second =
      times.copy_bytes >= kEnoughCopyBytes && times.copy_ns > 0
          ? static_cast<double>(times.copy_bytes) / (static_cast<double>(times.copy_ns) * 1e-9)
          : copy_bytes_per_second();
  policy_->end_step(profile);
}

Action ScopeState::send_out(SavedEntry& entry, bool drop_first) {
  auto drop = [&entry] {
    if (!entry.frame || !entry.frame->want_later(entry.index)) return false;
    entry.kept = at::Tensor();
    entry.action = Action::kRecompute;
    return true;
  };
  auto offload = [&] {
    // At once: the allocator waits for this memory. (Null also for a tensor the store cannot
    // hold.)
    std::shared_ptr<HostStore::Item> item =
        offload_after_its_operator(entry, entry.kept, /*now=*/true);
    if (!item) return false;  // the host pool is full
    entry.offloaded = std::move(item);
    entry.kept = at::Tensor();
    entry.action = Action::kOffload;
    entry.frame.reset();  // an offloaded tensor needs no rerun
    return true;
  };
  if (drop_first ? drop() || offload() : offload() || drop()) return entry.action;
  return Action::kKeep;
}

bool ScopeState::may_drop(const SavedTensorInfo& info, bool segment_input) const {
  // A segment input stays pinned by the frame: dropping its saved copy would free nothing.
  return policy_->evicts_under_pressure() && !info.is_leaf && !segment_input &&
         static_cast<std::size_t>(info.bytes) >= kEvictMinBytes;
}

void ScopeState::settle(SegmentFrame& frame) {
  // The forward has returned: what it saved for recompute comes back through its rerun now.
  frame.let_go_of_held();
  if (frame.droppable.empty()) {
    // Nothing of it is recomputed or may be dropped: no rerun, no use for the buffers' copies.
    if (!frame.recomputes_any()) frame.context.forget_buffers();
    return;
  }
  struct Clear {
    SegmentFrame& frame;
    ~Clear() {
      frame.droppable.clear();
      frame.kept_inputs.clear();
    }
  } clear{frame};
  if (frame.recomputes_any()) return;  // the frame pins its inputs for the plan's rerun anyway
  // Kept entries may hold the frame (so that pressure can drop them) when the frame pins nothing
  // more than keeping does: each input unchanged so far and tiny or saved exactly by a kept
  // tensor of the segment (then read through it). Otherwise they let go of the frame and
  // can only be offloaded.
  std::vector<std::shared_ptr<SavedEntry>> through(frame.inputs.size());
  for (const auto& [index, weak] : frame.kept_inputs) through[index] = weak.lock();
  for (std::size_t i = 0; i < frame.inputs.size(); ++i) {
    const at::Tensor& input = frame.inputs[i];
    if (!frame.input_changed(i) &&
        (through[i] || !input.has_storage() || input.storage().nbytes() < kEvictMinBytes)) {
      continue;
    }
    for (const std::weak_ptr<SavedEntry>& droppable : frame.droppable) {
      if (const std::shared_ptr<SavedEntry> entry = droppable.lock()) {
        std::lock_guard<std::mutex> lock(entry->mutex);
        if (entry->action == Action::kKeep) entry->frame.reset();
      }
    }
    return;
  }
  frame.read_inputs_through(std::move(through));
}

double ScopeState::copy_bytes_per_second() {
  if (copy_bytes_per_second_.load() > 0) return copy_bytes_per_second_.load();
  // Round trips of 256 KiB through the host store, timed: what an offload costs per byte here.
  // Small, so that measuring fits in whatever budget the step left.
  constexpr std::int64_t kElements = 64 * 1024;
  constexpr int kRoundTrips = 16;
  HostStore* store = host();
  if (store == nullptr) return 0;  // the scope serves no device yet: nothing to offload to
  try {
    // On the served device: on CUDA, a CPU probe would time host-to-host copies.
    const at::Tensor probe =
        at::zeros({kElements}, at::TensorOptions(at::kFloat).device(*device()));
    const auto start = std::chrono::steady_clock::now();
    at::Tensor back;
    for (int i = 0; i < kRoundTrips; ++i) {
      const std::shared_ptr<HostStore::Item> item = store->offload(probe, /*now=*/true);
      if (!item) return 0;
      back = store->copy_back(*item);
    }
    (void)back.sum().item<float>();  // the last copy back has landed (it is queued on CUDA)
    const double seconds = std::max<double>(static_cast<double>(elapsed_ns(start)) * 1e-9, 1e-9);
    copy_bytes_per_second_ = 2.0 * kRoundTrips * kElements * 4 / seconds;
  } catch (const std::exception&) {
    return 0;  // no room even for the probe: the plan prices offloads as unavailable
  }
  return copy_bytes_per_second_.load();
}

std::size_t ScopeState::relieve(std::size_t bytes_needed) {
  alloc::CachingAllocator& device = memory();
  const std::int64_t allocated_before = device.stats().allocated_bytes.current;
  if (HostStore* store = host()) store->release_sources(bytes_needed);
  const std::int64_t freed =
      std::max<std::int64_t>(0, allocated_before - device.stats().allocated_bytes.current);
  if (freed >= static_cast<std::int64_t>(bytes_needed) || !policy_->evicts_under_pressure()) {
    return static_cast<std::size_t>(freed);
  }
  try {
    return static_cast<std::size_t>(freed) + evict(bytes_needed - static_cast<std::size_t>(freed));
  } catch (const BudgetTooSmallError&) {
    if (freed > 0) return static_cast<std::size_t>(freed);  // the allocator tries again with it
    throw;
  }
}

std::size_t ScopeState::evict(std::size_t bytes_needed) {
  // Candidates are storages, each with the kept entries over it: evicting frees the storage only
  // when those entries are all that hold it (an op's output saved twice, by the op and the next
  // one, is two entries over one storage). Each goes the cheaper way: offloaded (the copy back)
  // or, when every entry over it can be produced again by its segment's rerun, dropped (the
  // rerun's forward).
  struct Group {
    std::vector<std::shared_ptr<SavedEntry>> entries;
    long holders = 0;  // the storage's reference count
    std::int64_t bytes = 0;
    double copy_seconds = 0;
    double drop_seconds = 0;   // infinite unless every entry can be dropped
    double packed_ns_ago = 0;  // its newest entry's staleness
    bool drop() const { return drop_seconds < copy_seconds; }
    // DTR's: cost / (bytes x staleness), the lowest first.
    double score() const {
      return std::min(copy_seconds, drop_seconds) /
             (static_cast<double>(std::max<std::int64_t>(bytes, 1)) * (packed_ns_ago + 1.0));
    }
  };
  std::unordered_map<const void*, Group> groups;
  // Entries looked at and passed over. Released only after step_mutex_: the last reference to one
  // may be this, and letting it go can release its segment's frame and what that holds (a Python
  // forward, whose release takes the GIL, which a thread waiting for step_mutex_ may hold).
  std::vector<std::shared_ptr<SavedEntry>> passed_over;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    const auto now = std::chrono::steady_clock::now();
    const double stored = copy_bytes_per_second_.load();
    const double bandwidth = stored > 0 ? stored : 1e9;
    for (const std::weak_ptr<SavedEntry>& weak : evictable_) {
      std::shared_ptr<SavedEntry> entry = weak.lock();
      if (!entry) continue;
      std::unique_lock<std::mutex> entry_lock(entry->mutex, std::try_to_lock);
      if (!entry_lock.owns_lock() || entry->action != Action::kKeep || !entry->kept.defined() ||
          !entry->kept.has_storage()) {
        passed_over.push_back(std::move(entry));
        continue;  // being unpacked right now, already out, or not plain memory
      }
      auto [it, added] = groups.try_emplace(entry->kept.storage().unsafeGetStorageImpl());
      Group& group = it->second;
      if (added) group.packed_ns_ago = std::numeric_limits<double>::infinity();
      group.holders = static_cast<long>(entry->kept.storage().use_count());
      group.bytes =
          std::max(group.bytes, static_cast<std::int64_t>(entry->kept.storage().nbytes()));
      group.copy_seconds = static_cast<double>(group.bytes) / bandwidth;
      // A segment still in its forward has no time yet: its tensors are offloaded rather than
      // dropped (a drop would pin its inputs for a rerun of unknown cost), unless the host pool is
      // full.
      const std::int64_t rerun_ns = entry->frame ? entry->frame->forward_ns.load() : 0;
      const double rerun = rerun_ns > 0 ? static_cast<double>(rerun_ns) * 1e-9
                                        : std::numeric_limits<double>::infinity();
      group.drop_seconds = added ? rerun : std::max(group.drop_seconds, rerun);
      group.packed_ns_ago =
          std::min(group.packed_ns_ago,
                   static_cast<double>(
                       std::chrono::duration_cast<std::chrono::nanoseconds>(now - entry->packed_at)
                           .count()));
      group.entries.push_back(std::move(entry));
    }
  }
  std::vector<Group*> candidates;
  for (auto& [storage, group] : groups) {
    // Held elsewhere too: evicting would copy it and free nothing.
    if (static_cast<long>(group.entries.size()) == group.holders) candidates.push_back(&group);
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const Group* a, const Group* b) { return a->score() < b->score(); });
  // The allocator is short of reserved bytes (room for a segment), so what counts is segments
  // returned: after each eviction, fully free segments go back.
  alloc::CachingAllocator& device = memory();
  const std::int64_t allocated_before = device.stats().allocated_bytes.current;
  const std::int64_t reserved_before = device.stats().reserved_bytes.current;
  {
    std::lock_guard<std::mutex> lock(step_mutex_);
    if (in_step_) {
      // The step reached the budget: it leaves no room.
      profile_.reserved_peak_bytes = std::max(
          profile_.reserved_peak_bytes, reserved_before + static_cast<std::int64_t>(bytes_needed));
    }
  }
  std::int64_t released = 0;
  std::int64_t evicted = 0, evicted_bytes = 0, dropped = 0, dropped_bytes = 0;
  for (const Group* group : candidates) {
    if (released >= static_cast<std::int64_t>(bytes_needed)) break;
    for (const std::shared_ptr<SavedEntry>& entry : group->entries) {
      std::int64_t freed_now = 0;
      Action went = Action::kKeep;
      {
        std::lock_guard<std::mutex> entry_lock(entry->mutex);
        if (entry->action != Action::kKeep || !entry->kept.defined()) continue;
        const std::int64_t allocated = device.stats().allocated_bytes.current;
        went = send_out(*entry, group->drop());
        if (went == Action::kKeep) continue;  // neither the host pool nor a rerun could take it
        freed_now = allocated - device.stats().allocated_bytes.current;
      }
      if (went == Action::kRecompute) {
        ++dropped;
        dropped_bytes += entry->bytes;
      } else {
        ++evicted;
        evicted_bytes += entry->bytes;
      }
      std::lock_guard<std::mutex> lock(step_mutex_);
      if (entry->step == step_ && in_step_) ++step_evictions_;
      if (entry->profile_index >= 0 && entry->step == step_ && in_step_) {
        ProfiledTensor& t = profile_.tensors[entry->profile_index];
        t.evicted = true;
        t.evicted_bytes = std::max<std::int64_t>(0, freed_now);
        t.evicted_event = static_cast<std::int64_t>(profile_.levels.size());
        push_event(device.stats());
      }
    }
    device.empty_cache();
    released = reserved_before - device.stats().reserved_bytes.current;
  }
  const alloc::AllocatorStats after = device.stats();
  const std::int64_t freed = std::max(released, allocated_before - after.allocated_bytes.current);
  if (evicted == 0 && dropped == 0 && freed <= 0) {
    // Nothing left to send out: say what the step needs instead of a bare out-of-memory.
    const std::optional<std::size_t> budget = device.budget();
    const std::int64_t least_budget =
        (budget ? static_cast<std::int64_t>(*budget) : 0) + static_cast<std::int64_t>(bytes_needed);
    throw BudgetTooSmallError(
        "actmem: the budget of " +
            alloc::format_bytes(budget ? static_cast<std::int64_t>(*budget) : 0) +
            " is too small for this training step: with every kept activation that can go out "
            "sent out, " +
            alloc::format_bytes(after.allocated_bytes.current) + " stay allocated (" +
            alloc::format_bytes(after.reserved_bytes.current) +
            " reserved: weights, gradients, optimizer state and the working set in use" +
            (after.reserved_bytes.current > after.allocated_bytes.current
                 ? ", the difference free but in segments that still hold live blocks"
                 : "") +
            ") and " + alloc::format_bytes(static_cast<std::int64_t>(bytes_needed)) +
            " more than the budget must be reserved to go on: ACTMEM_BUDGET must be at least " +
            alloc::format_bytes(least_budget) +
            ". That is a lower bound, what the step needs at this point: its later allocations "
            "may need more, and the allocator reserves memory in segments (2 MiB for requests up "
            "to 1 MiB, 20 MiB for those under 10 MiB; 2 MiB granules in the vmm layout), so the "
            "budget a step fits in can be up to a segment above the bytes it allocates",
        bytes_needed, static_cast<std::size_t>(least_budget));
  }
  count([&](ActivationStats& s) {
    s.evictions += evicted;
    s.bytes_evicted += evicted_bytes;
    s.drops += dropped;
    s.bytes_dropped += dropped_bytes;
  });
  return static_cast<std::size_t>(std::max<std::int64_t>(0, freed));
}

}  // namespace actmem::detail
