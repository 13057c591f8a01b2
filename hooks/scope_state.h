// Internal: what an ActivationScope shares with every hooks object it made (unpack runs on
// autograd's thread, possibly after the scope is gone): the policy, the host store, the counters,
// the step in progress and, for policies that learn, its profile and the kept tensors that can be
// evicted under pressure.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/StorageImpl.h>
#include <c10/core/Stream.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hooks/activation_scope.h"
#include "hooks/host_store.h"
#include "policy/policy.h"
#include "policy/segment_timer.h"
#include "policy/step_profile.h"

namespace actmem::detail {

struct SegmentFrame;

// Nanoseconds since `start`.
inline std::int64_t elapsed_ns(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              start)
      .count();
}

// The id a profile gives a tensor's storage (ProfiledTensor::storage, ProfiledSegment's links):
// its address. The tensor must have a storage.
inline std::uint64_t storage_id(const at::Tensor& tensor) {
  return reinterpret_cast<std::uintptr_t>(tensor.storage().unsafeGetStorageImpl());
}

// One saved tensor under a scope, shared by its hooks object and, while kept, the eviction list.
// The mutex guards action, kept and offloaded: eviction may turn a kept tensor into an offloaded
// one while autograd still holds it.
struct SavedEntry {
  std::mutex mutex;
  Action action = Action::kKeep;
  at::Tensor kept;
  std::shared_ptr<HostStore::Item> offloaded;
  // An offload decided at pack whose copy is not queued yet: the entry still holds the tensor
  // (Note [An offload waits for the operator that saved the tensor]). Lock held.
  bool offload_waiting() const {
    return action == Action::kOffload && !offloaded && kept.defined();
  }
  // While the segment may be rerun for it: recomputed, or kept and droppable under pressure.
  std::shared_ptr<SegmentFrame> frame;
  std::int64_t index = -1;  // its pack index within the frame
  std::int64_t bytes = 0;
  // The saved tensor's version counter (it holds no memory) and its version at pack time: an
  // unpack after an in-place change is PyTorch's error, as without hooks (PyTorch checks versions
  // only for tensors saved without hooks). Its type and sizes, for that error's message.
  c10::VariableVersion version_counter;
  std::uint32_t version = 0;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  // The current stream of that device when it was packed: the saving operator's, which a copy to
  // the host must follow wherever it is queued from. None for a CPU tensor.
  std::optional<c10::Stream> stream;
  std::vector<std::int64_t> sizes;
  std::string segment;  // its segment's name, "" outside segments
  std::chrono::steady_clock::time_point packed_at;
  std::uint64_t step = 0;           // the step it was packed in
  std::int64_t profile_index = -1;  // its row in that step's profile, -1 when not recorded
};

class ScopeState : public std::enable_shared_from_this<ScopeState> {
 public:
  ScopeState(std::shared_ptr<Policy> policy, ScopeOptions options);
  ~ScopeState();  // stops the allocator's trace if it started it
  ScopeState(const ScopeState&) = delete;
  ScopeState& operator=(const ScopeState&) = delete;

  Policy& policy() { return *policy_; }
  const ScopeOptions& options() const { return options_; }

  // Note [The device a scope serves]
  // A scope serves one device: its host store copies that device's tensors (the store's copy
  // engine and pinned pool belong to it), its pressure handler is that device's allocator's, and
  // only that device's kept tensors are evicted under pressure. The device is the one of the first
  // tensor of the managed kind (a CUDA tensor where actmem manages CUDA) packed under the scope or
  // given to one of its segments (bind()), not the one current when the scope was made: `python
  // -m actmem` makes its scope before the script runs, and a DDP rank's script calls
  // torch.cuda.set_device(local_rank) only then. Made in advance, the store served GPU 0 in every
  // rank, offloaded nothing on the others and made its copy stream on GPU 0 in each. Tensors of
  // other devices are kept where they are (HostStore::can_hold). What is not the served device's:
  // auto plans against the current device's budget (ACTMEM_BUDGET and enable(budget=...) give
  // every device the same one); and a script that moves its model to cuda:<rank> without
  // set_device leaves GPU 0 current, which the copy engine makes current again after each call
  // (cudaSetDevice: a context on GPU 0).

  // Serves `device` from now on if the scope serves none yet and `device` is of the kind actmem
  // manages (managed_device()); returns the host store, null while the scope serves no device.
  HostStore* bind(c10::Device device);
  // The host store, null while the scope serves no device. (Whoever holds a HostStore::Item has
  // one: items come from it.)
  HostStore* host() const { return host_ptr_.load(std::memory_order_acquire); }
  // The device the scope serves; none before bind() found one.
  std::optional<c10::Device> device() const {
    return host() != nullptr ? std::optional<c10::Device>(device_) : std::nullopt;
  }
  // The allocator of the device the scope serves; before it serves one, the managed device's
  // current one (device_memory()).
  alloc::CachingAllocator& memory();
  // Whether the scope's pressure handler is registered, with the allocator of the device it
  // serves (once it serves one): while its ActivationScope is active and not paused.
  void want_pressure_handler(bool wanted);

  // Updates the counters: `update(ActivationStats&)` runs under their lock.
  template <typename Update>
  void count(Update&& update) {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    update(stats_);
  }
  ActivationStats stats();

  // A pack: starts a step if none is in progress (or if every tensor of the one in progress is
  // gone: its graph was dropped, by an exception or on purpose), sets entry.step, and returns the
  // tensor's order in the step.
  std::int64_t begin_pack(const std::shared_ptr<SavedEntry>& entry);
  // Records a pack for the profile (when the policy wants one) and registers a kept tensor for
  // eviction (when the policy evicts). An offload's copy time is added when the copy is queued
  // (Note [An offload waits for the operator that saved the tensor]).
  void record_pack(const std::shared_ptr<SavedEntry>& entry, const SavedTensorInfo& info,
                   const at::Tensor& tensor, bool segment_input);
  void record_unpack(const SavedEntry& entry);
  // Bracket one segment's forward for the profile (on the thread that runs it); the time comes
  // from the scope's SegmentTimer when the step ends. begin_segment returns the bracket's id.
  // Segments begun between two steps (before the next step's first pack) count in that step.
  // None when the policy wants no profile.
  std::optional<std::uint64_t> begin_segment(const std::string& name);
  void end_segment(std::uint64_t id);
  // The bracketed segment's inputs that `producer`, the segment before it, returned (by storage).
  // `dropped`: the segment let go of them for a chain.
  void link_segment(std::uint64_t id, const std::string& producer,
                    std::vector<std::uint64_t> storages, bool dropped);
  // The outermost backward returned: the step is over; its profile goes to the policy.
  // `only`: if the step in progress is that one (a callback queued by end_step_with_backward).
  void end_step(std::optional<std::uint64_t> only = std::nullopt);
  // For an autograd engine actmem did not install (PyTorch's own, in a Python process), which
  // tells actmem nothing when a backward returns: an unpack of a tensor packed in step `step`.
  // When that is the step in progress, it ends when the backward running this unpack returns,
  // through a callback queued on the engine (once per step). Outside a backward (a saved tensor
  // read from Python), and in a backward for some inputs only (torch.autograd.grad, taken for one
  // nested in the step), nothing is queued. A backward that throws runs no callback: its step goes on
  // until its tensors are gone (begin_pack) or a later backward ends it.
  void end_step_with_backward(std::uint64_t step);
  // How many steps ended or were aborted: a segment links only to one of the same step.
  std::uint64_t steps_ended() const { return steps_ended_.load(std::memory_order_acquire); }
  // The backward threw: the step is over, and its profile is worth nothing.
  void abort_step();

  // Sends out kept tensors that nothing else holds, by DTR's score (cost / (bytes x staleness),
  // lowest first), each the cheaper way: offloaded (the cost: the copy) or dropped for its
  // segment's rerun (the cost: the segment's forward), returning freed segments to the backend,
  // until `bytes_needed` reserved bytes are released or no candidate is left; returns the bytes
  // freed. Throws BudgetTooSmallError when nothing could go.
  std::size_t evict(std::size_t bytes_needed);
  // The scope's pressure handler: first lets go of the device tensors the host store holds for
  // copies out (HostStore::release_sources), then, if that was not enough and the policy evicts,
  // evicts. Returns the device bytes freed; throws as evict does when nothing was.
  std::size_t relieve(std::size_t bytes_needed);

  // Whether a kept tensor may hold its segment's frame so that pressure can drop it for a rerun.
  bool may_drop(const SavedTensorInfo& info, bool segment_input) const;
  // A segment's forward ended: its kept tensors keep holding the frame only if that pins no
  // memory the segment does not hold anyway (see the definition).
  void settle(SegmentFrame& frame);

  // Note [An offload waits for the operator that saved the tensor]
  // An operator may save a tensor before its kernel writes it: rrelu_with_noise saves `noise`,
  // then fills it, and moves no version counter. A copy taken at pack would carry what was there
  // before. So an offload is decided at pack, while the entry keeps the tensor (action kOffload,
  // nothing offloaded yet), and its copy is queued once that operator has run, after the work of
  // the stream that was current when it packed (the operator's stream; the copy may be queued on
  // another thread, or after the program switched streams): on the thread that packed it, at a
  // pack under a later autograd node
  // (at::sequence_number: a node takes its number when it is created, before its operator saves
  // and runs), and when a segment begins or ends; what still waits when backward begins (the
  // first unpack), on any thread. (Keeping those instead, since backward needs them first, was
  // tried: auto then needed a granule more than keep's budget in
  // DownstreamAutoBudget.FollowingTheAdviceOfATooSmallBudgetReachesOneThatFits.) What still waits
  // when the step ends is kept. A copy that finds the host pool full, or no room for a dense copy,
  // keeps the tensor (counted as a fallback, as a pack that found the pool full was).
  void defer_offload(const std::shared_ptr<SavedEntry>& entry);
  enum class Deferred { kOfEarlierNodesOnThisThread, kOnThisThread, kAll };
  void send_deferred_offloads(Deferred which);
  void keep_deferred_offloads();

 private:
  struct DeferredOffload {
    std::weak_ptr<SavedEntry> entry;
    std::thread::id thread;  // that packed it
    std::uint64_t node = 0;  // at::sequence_number when it was packed
  };
  // The deferred offloads `which` names, out of the list (the expired ones dropped).
  std::vector<std::shared_ptr<SavedEntry>> take_deferred(Deferred which);
  // Queues the copy of one deferred offload, or keeps the tensor (see the Note).
  void send_deferred(const std::shared_ptr<SavedEntry>& pending);
  // HostStore::offload of `tensor`, saved as `entry`, ordered after the entry's packing stream.
  std::shared_ptr<HostStore::Item> offload_after_its_operator(const SavedEntry& entry,
                                                               const at::Tensor& tensor, bool now);
  // A deferred offload kept instead: the action, the counters and the profile say so, and the
  // pressure handler may send it out.
  // `pool_refused`: the host pool had no room (the policy hears of it, the profile counts it).
  void keep_instead(const std::shared_ptr<SavedEntry>& kept, bool fell_back,
                    bool pool_refused = false);
  // The entry's row in the profile of the step in progress, or null (step_mutex_ held).
  ProfiledTensor* profiled(const SavedEntry& entry);
  double copy_bytes_per_second();  // measured once
  // Offloads `entry`'s kept tensor or drops it for its segment's rerun (`drop_first`: try that
  // first), whichever works; returns the action it took, kKeep if neither did. Entry lock held.
  Action send_out(SavedEntry& entry, bool drop_first);
  void mark_freeable();  // step_mutex_ held
  // The profile's memory timeline (step_mutex_ held): the allocator's trace is recorded during
  // each step (started here unless the user records it already), each event notes where it
  // stands, and at the step's end the allocations between events give each one's peak.
  void start_trace();
  void stop_trace();  // when this scope started it
  // Empties the allocator's cache before the scope's first profiled step, once (step_mutex_
  // held). See the definition.
  void flush_cache_before_first_profile();
  // An event of the profile: the allocated bytes then, and the reserved high-water mark.
  void push_event(const alloc::AllocatorStats& device);
  std::vector<std::int64_t> peaks_between_events();

  // The pressure handler's registration (bind_mutex_ held).
  void update_pressure_handler();

  std::shared_ptr<Policy> policy_;
  ScopeOptions options_;

  std::mutex bind_mutex_;  // what bind() sets, and the pressure handler's registration
  std::unique_ptr<HostStore> host_;
  c10::Device device_{c10::DeviceType::CPU};  // the served device, written before host_ptr_
  std::atomic<HostStore*> host_ptr_{nullptr};  // host_, read without the lock
  std::atomic<alloc::CachingAllocator*> memory_{nullptr};  // the served device's allocator
  bool pressure_handler_wanted_ = false;
  std::optional<std::uint64_t> pressure_handler_;  // its id with *memory_

  std::mutex stats_mutex_;
  ActivationStats stats_;

  std::atomic<double> copy_bytes_per_second_{0};

  std::mutex deferred_mutex_;  // deferred_
  std::vector<DeferredOffload> deferred_;
  std::atomic<std::size_t> deferred_count_{0};  // deferred_.size(), read without the lock
  std::atomic<std::uint64_t> steps_ended_{0};

  // Times segments for the profile: CUPTI when the device is CUDA and CUPTI answers, else clocks.
  // Null when the policy wants no profile.
  std::unique_ptr<SegmentTimer> timer_;
  bool timer_sees_copies_ = false;  // CUPTI: device time excludes the copies an offload makes

  // Lock order: step_mutex_ before any SavedEntry::mutex, never the other way round.
  std::mutex step_mutex_;  // everything below
  bool in_step_ = false;
  std::uint64_t step_ = 0;
  // The step end_step_with_backward queued an end for: written under step_mutex_, read without
  // it on the unpack's path.
  std::atomic<std::uint64_t> end_queued_for_{0};
  std::int64_t next_order_ = 0;
  std::chrono::steady_clock::time_point step_start_;
  StepProfile profile_;
  std::uint64_t next_segment_id_ = 0;
  alloc::CachingAllocator* traced_ = nullptr;       // whose trace the profile reads (memory())
  bool owns_trace_ = false;                         // the allocator's trace was off: ours to clear
  std::size_t trace_start_ = 0;                     // its length when the step began
  std::vector<std::size_t> event_trace_positions_;  // its length at each event
  std::vector<std::pair<std::uint64_t, std::string>> segment_names_;  // bracketed, in order
  struct Link {
    std::string producer;
    std::vector<std::uint64_t> storages;
    bool dropped = false;
  };
  std::map<std::uint64_t, Link> segment_links_;  // by bracket
  // ProfiledSegment::end_event, by bracket.
  std::map<std::uint64_t, std::int64_t> segment_end_events_;
  std::set<std::uint64_t> open_segments_;        // begun, not yet ended
  bool backward_began_ = false;
  bool detailed_ = true;  // the step in progress is profiled whole (Policy::profiles_step)
  bool cache_flushed_ = false;  // flush_cache_before_first_profile has run
  std::int64_t step_evictions_ = 0;  // tensors evicted during the step in progress
  std::int64_t step_refusals_ = 0;   // its offloads the host pool refused
  std::vector<std::weak_ptr<SavedEntry>> step_entries_;  // this step's
  // Each profiled tensor's storage, by profile row (none for tensors without one): keeps its
  // address from being reused within the step, so it stays an id, and tells at the start of
  // backward whether a storage sent out at pack is gone.
  std::vector<std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>>> step_storages_;
  std::vector<std::weak_ptr<SavedEntry>> evictable_;
};

// The scope active on this thread, or null.
const std::shared_ptr<ScopeState>& active_scope();

// Called by the engine when the outermost backward on this thread returns, or throws.
void backward_finished();
void backward_failed();

}  // namespace actmem::detail
