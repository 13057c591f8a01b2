// The caching allocator: the core of actmem's memory management.
//
// Contract:
// - allocate(bytes, stream) returns memory aligned to 512 bytes for use on `stream`, or throws
//   OutOfMemoryError; allocate(0) returns nullptr. deallocate(ptr) returns it; deallocate(nullptr)
//   does nothing; any other pointer that is not a live allocation throws InvalidPointerError and
//   changes nothing.
// - A freed block is reused at once by requests on its own stream; if record_stream(ptr, other)
//   was called, it is reused only after the work queued on `other` when it was freed completes.
//   A handle that names a different stream on each thread (CUDA's per-thread default stream;
//   StreamEvents::across_threads) has no pool of its own: its blocks are reused only after the
//   work queued before their free on every such stream completes.
// - The budget caps reserved bytes. A request that would cross it first releases cached free
//   segments, then asks the pressure handlers (without holding the allocator's lock) to free
//   memory, retries, and only then throws OutOfMemoryError.
// - Every public member is thread-safe.
//
// Note [Caching allocator layout]
// Requests are rounded up to 512 bytes. Requests of at most 1 MiB come from the small pool, cut
// from 2 MiB segments; larger ones from the large pool, cut from 20 MiB segments (requests under
// 10 MiB) or from segments of their own size rounded up to 2 MiB. Each pool is an ordered set of
// free blocks keyed by (stream, size, address), so the best fit on a stream is one lower_bound.
// A block bigger than the request is split when the remainder is worth keeping (at least 512 B in
// the small pool or for a small request, more than 1 MiB for a large one); a freed block is merged
// with free neighbours in its segment, so a segment whose blocks are all free becomes one block
// again and can be returned to the backend. Under budget pressure, a request that would need a
// 20 MiB segment takes one of its own rounded size instead. With a VirtualMemory, every request comes from one segment
// per stream that grows and shrinks in place instead: Note [Growable segments] in
// caching_allocator.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "allocator/backend.h"
#include "allocator/config.h"
#include "allocator/stats.h"
#include "allocator/stream_events.h"
#include "allocator/trace.h"
#include "allocator/virtual_memory.h"

namespace actmem::alloc {

class CachingAllocator {
 public:
  // Told how many bytes the allocator is short of; frees what it can (by releasing allocations
  // back to this allocator) and returns how many bytes it freed, 0 when it could free nothing.
  using PressureHandler = std::function<std::size_t(std::size_t bytes_needed)>;
  using HandlerId = std::uint64_t;

  static constexpr std::size_t kMinBlockSize = 512;
  static constexpr std::size_t kSmallSize = std::size_t{1} << 20;
  static constexpr std::size_t kSmallSegment = std::size_t{2} << 20;
  static constexpr std::size_t kLargeSegment = std::size_t{20} << 20;
  static constexpr std::size_t kMinLargeAlloc = std::size_t{10} << 20;
  static constexpr std::size_t kRoundLarge = std::size_t{2} << 20;

  CachingAllocator(std::unique_ptr<Backend> backend, std::unique_ptr<StreamEvents> events,
                   AllocatorOptions options = {});
  // Host streams: every event completes at once.
  explicit CachingAllocator(std::unique_ptr<Backend> backend, AllocatorOptions options = {});
  // The `vmm` layout: every request comes from one growable segment per stream over
  // `virtual_memory` (Note [Growable segments]); `backend` only names the device there. `events`
  // must wait for the streams the device runs (CudaEvents over CudaVirtualMemory): unmapping waits
  // for them (Note [Unmapping waits for the stream]). Null is ImmediateEvents, right for host
  // memory only. Each stream key is a stream of that device, or kUnorderedPool.
  CachingAllocator(std::unique_ptr<Backend> backend, std::unique_ptr<VirtualMemory> virtual_memory,
                   std::unique_ptr<StreamEvents> events, AllocatorOptions options = {});
  // Returns every segment to the backend. Allocations still live become dangling.
  ~CachingAllocator();

  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(std::size_t bytes, Stream stream = kDefaultStream);
  void deallocate(void* ptr);
  void record_stream(void* ptr, Stream stream);

  // The rounded size of the live allocation at `ptr`; throws InvalidPointerError otherwise.
  std::size_t block_size(const void* ptr) const;
  // True when `ptr` is the start of a live allocation.
  bool owns(const void* ptr) const;
  // True when `ptr` lies anywhere inside memory this allocator reserved.
  bool in_reserved_memory(const void* ptr) const;

  // Returns every cached segment that holds no live block to the backend.
  void empty_cache();

  // Caps reserved bytes (nullopt: no cap). Lowering it releases cached segments at once and
  // others as they become free.
  void set_budget(std::optional<std::size_t> bytes);
  std::optional<std::size_t> budget() const;

  // Handlers are called in the order they were added, possibly from several threads at once.
  // remove_pressure_handler waits for calls in progress to return, so a handler must not add or
  // remove handlers. An allocation a handler makes from this allocator is not offered to the
  // handlers again: it fails at once if it does not fit.
  HandlerId add_pressure_handler(PressureHandler handler);
  void remove_pressure_handler(HandlerId id);

  // While one lives, the allocations this thread makes (from any CachingAllocator) are
  // speculative: one that no free block or new segment within the budget can serve fails at once
  // with OutOfMemoryError, without releasing cached segments, asking the pressure handlers or
  // counting as an out-of-memory (stats().ooms, the trace). For work that can do without the
  // memory, such as a prefetch, which must not make room by sending other tensors out.
  class Speculative {
   public:
    Speculative();
    ~Speculative();
    Speculative(const Speculative&) = delete;
    Speculative& operator=(const Speculative&) = delete;

   private:
    bool previous_;
  };

  AllocatorStats stats() const;
  void reset_peak_stats();

  void set_trace_enabled(bool enabled);
  bool trace_enabled() const;
  // The entries recorded since the trace was last cleared, from the `first`-th on.
  std::vector<TraceEntry> trace(std::size_t first = 0) const;
  std::size_t trace_size() const;  // how many entries trace() would return
  void clear_trace();

  const Backend& backend() const;
  // The virtual memory growable segments come from; nullptr in the classic layout.
  const VirtualMemory* virtual_memory() const;

  // Checks the pools against the stats: blocks tile their segments without overlap, free
  // neighbours are merged, byte counts add up. Throws std::logic_error describing the first
  // violation. O(blocks); for tests.
  void check_invariants() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace actmem::alloc
