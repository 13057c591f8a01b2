#include "allocator/caching_allocator.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "allocator/block_pool.h"
#include "allocator/errors.h"

namespace actmem::alloc {

using detail::Block;
using detail::BlockPool;

namespace {

std::size_t round_up(std::size_t n, std::size_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

std::size_t round_request(std::size_t bytes) {
  return bytes < CachingAllocator::kMinBlockSize
             ? CachingAllocator::kMinBlockSize
             : round_up(bytes, CachingAllocator::kMinBlockSize);
}

// The segment a fresh request of `size` (rounded) gets. See Note [Caching allocator layout].
std::size_t segment_size_for(std::size_t size) {
  if (size <= CachingAllocator::kSmallSize) return CachingAllocator::kSmallSegment;
  if (size < CachingAllocator::kMinLargeAlloc) return CachingAllocator::kLargeSegment;
  return round_up(size, CachingAllocator::kRoundLarge);
}

// Above this, rounding would overflow std::size_t.
constexpr std::size_t kMaxRequest = static_cast<std::size_t>(-1) - 2 * CachingAllocator::kRoundLarge;

// The smallest segment that can hold a request of `size` (rounded): 2 MiB for the small pool,
// the request rounded up to 2 MiB for the large one.
std::size_t smallest_segment_for(std::size_t size) {
  return size <= CachingAllocator::kSmallSize ? CachingAllocator::kSmallSegment
                                              : round_up(size, CachingAllocator::kRoundLarge);
}

// True while this thread runs a pressure handler: an allocation it makes may not ask the handlers
// again (that would recurse into them, and re-lock their list).
thread_local bool t_in_handler = false;
// True while this thread holds a CachingAllocator::Speculative.
thread_local bool t_speculative = false;

std::string pointer_text(const void* ptr) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%p", ptr);
  return buffer;
}

}  // namespace

class CachingAllocator::Impl {
  using PoolNode = std::set<Block*, detail::BlockOrder>::node_type;
  using LiveNode = std::unordered_map<void*, Block*>::node_type;

 public:
  Impl(std::unique_ptr<Backend> backend, std::unique_ptr<VirtualMemory> virtual_memory,
       std::unique_ptr<StreamEvents> events, AllocatorOptions options)
      : backend_(std::move(backend)),
        vm_(std::move(virtual_memory)),
        events_(std::move(events)),
        options_(options) {
    if (!backend_) throw std::invalid_argument("actmem: CachingAllocator needs a backend");
    if (!events_) events_ = std::make_unique<ImmediateEvents>();
    trace_enabled_ = options_.record_trace;
  }

  ~Impl() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [event, block] : pending_) events_->release(event);
    std::vector<Block*> blocks;
    for (BlockPool* pool : {&small_, &large_}) {
      blocks.insert(blocks.end(), pool->blocks.begin(), pool->blocks.end());
    }
    for (auto& [ptr, block] : live_) blocks.push_back(block);
    for (auto& [event, block] : pending_) blocks.push_back(block);
    blocks.insert(blocks.end(), awaiting_events_.begin(), awaiting_events_.end());
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    for (Block* block : blocks) delete block;
    for (Block* block : spare_blocks_) delete block;
    for (auto& [start, size] : segments_) {
      if (growable_base(start)) continue;
      try {
        backend_->deallocate(reinterpret_cast<void*>(start), size);
      } catch (const std::exception&) {
        // At teardown (a CUDA runtime already unloading, say) there is nobody left to tell.
      }
    }
    for (auto& [stream, segment] : growable_) {
      try {
        vm_->release(segment.base, segment.reserved);
      } catch (const std::exception&) {
        // As above.
      }
    }
  }

  void* allocate(std::size_t bytes, Stream stream) {
    if (bytes == 0) return nullptr;
    if (const Stream shared = events_->across_threads(stream); shared != stream) {
      void* ptr = allocate(bytes, kUnorderedPool);  // no pool of its own: StreamEvents
      record_stream(ptr, shared);
      return ptr;
    }
    if (bytes > kMaxRequest) {
      std::lock_guard<std::mutex> lock(mutex_);
      throw out_of_memory(bytes, stream, "no allocator can serve a request this large", 0);
    }
    const std::size_t size = round_request(bytes);
    for (int round = 0;; ++round) {
      std::size_t shortfall = 0;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (options_.budget_bytes && smallest_segment_for(size) > *options_.budget_bytes) {
          throw out_of_memory(bytes, stream,
                              "the smallest segment this request needs exceeds the budget alone",
                              smallest_segment_for(size));
        }
        if (!pending_.empty() || !awaiting_events_.empty()) process_events();
        BlockPool& pool = pool_for(size);
        // A free block, else a new segment (in the vmm layout, a free block may lack granules
        // after a release: backed again if used).
        const auto serve = [&]() -> void* {
          if (Block* block = backed_for(take_free_block(pool, size, stream), size)) {
            return hand_out(block, size, bytes, /*cache_hit=*/true);
          }
          if (Block* block = backed_for(new_segment(pool, size, stream), size)) {
            return hand_out(block, size, bytes, /*cache_hit=*/false);
          }
          return nullptr;
        };
        if (void* ptr = serve()) return ptr;
        if (t_speculative) {
          throw OutOfMemoryError("actmem: a speculative allocation of " +
                                     format_bytes(static_cast<std::int64_t>(bytes)) +
                                     " found no room: not served",
                                 bytes);
        }
        if (release_cached_segments(OnFailure::kReport) > 0) {
          if (void* ptr = serve()) return ptr;
        }
        if (round >= options_.pressure_rounds || handler_count_ == 0 || t_in_handler) {
          throw out_of_memory(bytes, stream,
                              t_in_handler          ? "allocating inside a pressure handler"
                              : handler_count_ == 0 ? "no pressure handler is registered"
                                                    : "the pressure handlers could not free enough",
                              least_budget_for(size));
        }
        shortfall = shortfall_for(size);
        ++stats_.pressure_calls;
      }
      std::size_t freed = 0;
      try {
        freed = call_pressure_handlers(shortfall);
      } catch (...) {
        // A handler that throws (the hooks' BudgetTooSmallError when nothing is left to send out;
        // any other error too) fails the request: an out-of-memory all the same.
        std::lock_guard<std::mutex> lock(mutex_);
        count_out_of_memory(bytes, stream);
        throw;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.pressure_freed_bytes += static_cast<std::int64_t>(freed);
      if (freed == 0) {
        throw out_of_memory(bytes, stream, "the pressure handlers freed nothing",
                            least_budget_for(size));
      }
    }
  }

  void deallocate(void* ptr) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) throw InvalidPointerError(describe_bad_pointer(ptr, "deallocate"));
    Block* block = it->second;
    if (spare_live_nodes_.size() < kSpareNodes) {
      spare_live_nodes_.push_back(live_.extract(it));
    } else {
      live_.erase(it);
    }
    block->allocated = false;
    stats_.allocated_bytes.decrease(static_cast<std::int64_t>(block->size));
    stats_.requested_bytes.decrease(static_cast<std::int64_t>(block->requested));
    stats_.live_blocks.decrease(1);
    record_trace(TraceEntry::Action::kFree, block->ptr, block->size, block->stream);
    if (block->stream_uses.empty()) {
      retire(block);
      return;
    }
    if (!record_use_events(block)) awaiting_events_.push_back(block);
  }

  void record_stream(void* ptr, Stream stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    Block* block = live_block(ptr, "record_stream");
    // A failed record is retried on whichever thread allocates next (process_events).
    stream = events_->across_threads(stream);
    if (stream == block->stream) return;
    auto& uses = block->stream_uses;
    if (std::find(uses.begin(), uses.end(), stream) == uses.end()) uses.push_back(stream);
  }

  std::size_t block_size(const void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_block(ptr, "block_size")->size;
  }

  bool owns(const void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_.count(const_cast<void*>(ptr)) != 0;
  }

  bool in_reserved_memory(const void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    return segment_containing(ptr) != segments_.end();
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!pending_.empty() || !awaiting_events_.empty()) process_events();
    release_cached_segments(OnFailure::kThrow);
  }

  void set_budget(std::optional<std::size_t> bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    options_.budget_bytes = bytes;
    if (over_budget()) release_cached_segments(OnFailure::kThrow);
  }

  std::optional<std::size_t> budget() {
    std::lock_guard<std::mutex> lock(mutex_);
    return options_.budget_bytes;
  }

  HandlerId add_pressure_handler(PressureHandler handler) {
    std::unique_lock<std::shared_mutex> handlers_lock(handlers_mutex_);
    const HandlerId id = next_handler_id_++;
    handlers_.emplace_back(id, std::move(handler));
    std::lock_guard<std::mutex> lock(mutex_);
    handler_count_ = handlers_.size();
    return id;
  }

  void remove_pressure_handler(HandlerId id) {
    std::unique_lock<std::shared_mutex> handlers_lock(handlers_mutex_);
    handlers_.erase(std::remove_if(handlers_.begin(), handlers_.end(),
                                   [id](const auto& entry) { return entry.first == id; }),
                    handlers_.end());
    std::lock_guard<std::mutex> lock(mutex_);
    handler_count_ = handlers_.size();
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    AllocatorStats s = stats_;
    s.budget_bytes = static_cast<std::int64_t>(options_.budget_bytes.value_or(0));
    s.largest_free_block_bytes = static_cast<std::int64_t>(largest_free_block());
    return s;
  }

  void reset_peak_stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Stat* stat : {&stats_.allocated_bytes, &stats_.requested_bytes, &stats_.reserved_bytes,
                       &stats_.active_bytes, &stats_.segments, &stats_.live_blocks}) {
      stat->reset_peak();
    }
    stats_.fragmentation_at_peak_bytes = stats_.reserved_bytes.current -
                                         stats_.allocated_bytes.current;
    stats_.reserved_at_peak_bytes = stats_.reserved_bytes.current;
  }

  void set_trace_enabled(bool enabled) {
    std::lock_guard<std::mutex> lock(mutex_);
    trace_enabled_ = enabled;
  }
  bool trace_enabled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return trace_enabled_;
  }
  std::vector<TraceEntry> trace(std::size_t first) {
    std::lock_guard<std::mutex> lock(mutex_);
    return {trace_.begin() + static_cast<std::ptrdiff_t>(std::min(first, trace_.size())),
            trace_.end()};
  }
  std::size_t trace_size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return trace_.size();
  }
  void clear_trace() {
    std::lock_guard<std::mutex> lock(mutex_);
    trace_.clear();
  }

  const Backend& backend() const { return *backend_; }
  const VirtualMemory* virtual_memory() const { return vm_.get(); }

  void check_invariants();

 private:
  // --- Finding and handing out blocks (mutex_ held) ---

  Block* take_free_block(BlockPool& pool, std::size_t size, Stream stream) {
    Block key;
    key.stream = stream;
    key.size = size;
    auto it = pool.blocks.lower_bound(&key);
    if (it == pool.blocks.end() || (*it)->stream != stream) return nullptr;
    Block* block = *it;
    // An oversize block (> max_split_size) serves only requests of its own scale, so small
    // requests cannot pin a big block, and a big request does not take a much bigger one.
    if (size < options_.max_split_size && block->size >= options_.max_split_size) return nullptr;
    if (size >= options_.max_split_size && block->size >= size + kLargeSegment) return nullptr;
    release_node(pool.blocks.extract(it));
    return block;
  }

  // The vmm layout serves every request from the stream's growable segment: small blocks then
  // fill the ends of granules that large ones leave partly used, where 2 MiB segments of their own
  // would each hold a granule or more. The classic layout keeps PyTorch's two pools.
  BlockPool& pool_for(std::size_t size) {
    return size <= kSmallSize && !vm_ ? small_ : large_;
  }

  bool fits_budget(std::size_t segment) const {
    return !options_.budget_bytes ||
           static_cast<std::size_t>(stats_.reserved_bytes.current) + segment <=
               *options_.budget_bytes;
  }

  bool over_budget() const {
    return options_.budget_bytes &&
           static_cast<std::size_t>(stats_.reserved_bytes.current) > *options_.budget_bytes;
  }

  // A fresh segment for a request of `size`, or nullptr if the budget or the backend refuses; in
  // the vmm layout, a large request's stream segment grown instead.
  Block* new_segment(BlockPool& pool, std::size_t size, Stream stream) {
    if (vm_ && !pool.is_small) return grow_segment(size, stream);
    std::size_t segment = segment_size_for(size);
    void* ptr = nullptr;
    if (fits_budget(segment)) ptr = backend_->allocate(segment);
    // Under pressure a request that would get a shared 20 MiB segment takes only its own size.
    const std::size_t own = round_up(size, kRoundLarge);
    if (ptr == nullptr && !pool.is_small && own < segment && fits_budget(own)) {
      segment = own;
      ptr = backend_->allocate(segment);
    }
    if (ptr == nullptr) return nullptr;
    ++stats_.backend_allocs;
    stats_.reserved_bytes.increase(static_cast<std::int64_t>(segment));
    note_reserved_growth();
    stats_.segments.increase(1);
    segments_.emplace(reinterpret_cast<std::uintptr_t>(ptr), segment);
    record_trace(TraceEntry::Action::kSegmentAlloc, ptr, segment, stream);
    Block* block = new_block();
    block->ptr = static_cast<char*>(ptr);
    block->size = segment;
    block->stream = stream;
    block->pool = &pool;
    return block;
  }

  bool should_split(const Block& block, std::size_t size) const {
    const std::size_t remaining = block.size - size;
    // A small request splits like one from the small pool; in the vmm layout it comes from the
    // growable segment, whose remainders small requests use (pool_for).
    if (block.pool->is_small || (block.growable && size <= kSmallSize)) {
      return remaining >= kMinBlockSize;
    }
    return size < options_.max_split_size && remaining > kSmallSize;
  }

  // Marks `block` allocated for a request of `requested` bytes (`size` once rounded), splitting
  // off the remainder when it is worth keeping.
  void* hand_out(Block* block, std::size_t size, std::size_t requested, bool cache_hit) {
    if (should_split(*block, size)) {
      Block* rest = new_block();
      rest->ptr = block->ptr + size;
      rest->size = block->size - size;
      rest->stream = block->stream;
      rest->pool = block->pool;
      rest->growable = block->growable;
      if (block->growable && growable_[block->stream].last == block) {
        growable_[block->stream].last = rest;
      }
      rest->prev = block;
      rest->next = block->next;
      if (rest->next != nullptr) rest->next->prev = rest;
      block->next = rest;
      block->size = size;
      insert_free(*block->pool, rest);
      ++stats_.splits;
    }
    block->allocated = true;
    block->requested = requested;
    insert_live(block);
    const auto block_bytes = static_cast<std::int64_t>(block->size);
    stats_.allocated_bytes.increase(block_bytes);
    stats_.requested_bytes.increase(static_cast<std::int64_t>(requested));
    stats_.active_bytes.increase(block_bytes);
    stats_.live_blocks.increase(1);
    ++stats_.allocations;
    if (cache_hit) ++stats_.cache_hits;
    if (stats_.allocated_bytes.current == stats_.allocated_bytes.peak) {
      stats_.fragmentation_at_peak_bytes =
          stats_.reserved_bytes.current - stats_.allocated_bytes.current;
      stats_.reserved_at_peak_bytes = stats_.reserved_bytes.current;
    }
    record_trace(TraceEntry::Action::kAlloc, block->ptr, requested, block->stream);
    return block->ptr;
  }

  // --- Recycling: the steady state allocates nothing itself (mutex_ held) ---
  //
  // Splitting and merging would otherwise cost a set node, a map node and a Block per
  // allocate/free pair; C++17 node handles let those be reused.

  static constexpr std::size_t kSpareNodes = 64;

  Block* new_block() {
    if (spare_blocks_.empty()) return new Block;
    Block* block = spare_blocks_.back();
    spare_blocks_.pop_back();
    return block;
  }

  void delete_block(Block* block) {
    if (spare_blocks_.size() >= kSpareNodes) {
      delete block;
      return;
    }
    std::vector<Stream> uses = std::move(block->stream_uses);
    uses.clear();
    *block = Block{};
    block->stream_uses = std::move(uses);
    spare_blocks_.push_back(block);
  }

  void release_node(PoolNode node) {
    if (spare_pool_nodes_.size() < kSpareNodes) spare_pool_nodes_.push_back(std::move(node));
  }

  void insert_free(BlockPool& pool, Block* block) {
    if (spare_pool_nodes_.empty()) {
      pool.blocks.insert(block);
      return;
    }
    PoolNode node = std::move(spare_pool_nodes_.back());
    spare_pool_nodes_.pop_back();
    node.value() = block;
    pool.blocks.insert(std::move(node));
  }

  void insert_live(Block* block) {
    if (spare_live_nodes_.empty()) {
      live_.emplace(block->ptr, block);
      return;
    }
    LiveNode node = std::move(spare_live_nodes_.back());
    spare_live_nodes_.pop_back();
    node.key() = block->ptr;
    node.mapped() = block;
    live_.insert(std::move(node));
  }

  // --- Returning blocks (mutex_ held) ---

  // A block no stream uses any more: merge it with free neighbours and put it back in its pool.
  void retire(Block* block) {
    block->event_failure_reported = false;  // its events, if any failed, are behind it
    stats_.active_bytes.decrease(static_cast<std::int64_t>(block->size));
    BlockPool& pool = *block->pool;
    if (block->prev != nullptr && block->prev->is_free()) {
      Block* prev = block->prev;
      release_node(pool.blocks.extract(prev));
      block->ptr = prev->ptr;
      block->size += prev->size;
      block->prev = prev->prev;
      if (block->prev != nullptr) block->prev->next = block;
      delete_block(prev);
      ++stats_.merges;
    }
    if (block->next != nullptr && block->next->is_free()) {
      Block* next = block->next;
      if (next->growable && growable_[next->stream].last == next) {
        growable_[next->stream].last = block;
      }
      release_node(pool.blocks.extract(next));
      block->size += next->size;
      block->next = next->next;
      if (block->next != nullptr) block->next->prev = block;
      delete_block(next);
      ++stats_.merges;
    }
    if (block->growable) {
      insert_free(pool, block);
      if (over_budget()) {
        UnmapPass pass(*events_);
        shrink_growable_segments(pass);
        if (pass.failure()) report_backend_error(*pass.failure(), "its granules stay mapped");
      }
      return;
    }
    if (block->is_whole_segment() && over_budget()) {
      try {
        release_segment(block);
      } catch (const std::exception& error) {
        report_backend_error(error, "the segment stays cached");
        insert_free(pool, block);
      }
      return;
    }
    insert_free(pool, block);
  }

  // --- Events, and the CUDA errors that may come with them (mutex_ held) ---
  //
  // Note [A failed CUDA call in the middle of a free]
  // A free must not fail: PyTorch's deleters and the C ABI have nowhere to send the error, and a
  // free that throws after half its work leaves the pools inconsistent. So the failures that can
  // come during one are handled where they happen, each reported on stderr and counted in
  // stats().backend_errors:
  // - An event that cannot be created or recorded for a stream the block was used on: the block
  //   is no longer allocated, but it stays out of every pool (its stream_uses keep the streams
  //   still without an event) until process_events records the event. Never reused early. Every
  //   waiting block is tried again at each allocation, and its failure is reported once, not at
  //   every try (a device that keeps failing would otherwise print a line per allocation).
  // - An event query that fails with anything but "not ready": the event is kept, as not yet
  //   complete, and asked again next time; reported once per freed block, likewise.
  // - A segment the backend will not take back (cudaFree failing) while a free releases it over
  //   the budget: it stays cached. In the vmm layout, granules whose stream cannot be waited for,
  //   or that will not unmap: they stay mapped (Note [Unmapping waits for the stream]).
  // A failure while memory is released leaves that segment cached and the rest released; then
  // empty_cache and set_budget throw it to the caller, and a release before a request fails
  // reports it and goes on. A failure to get memory is out of memory, as before. Every path leaves
  // check_invariants() true.

  // Records an event on each stream `block` was used on; false, the streams without one left in
  // stream_uses, when the events cannot be recorded (reported).
  bool record_use_events(Block* block) {
    auto& uses = block->stream_uses;
    std::size_t recorded = 0;
    try {
      for (; recorded < uses.size(); ++recorded) {
        const Event event = events_->record(uses[recorded]);
        pending_.emplace_back(event, block);
        ++block->pending_events;
      }
    } catch (const std::exception& error) {
      uses.erase(uses.begin(), uses.begin() + static_cast<std::ptrdiff_t>(recorded));
      if (!block->event_failure_reported) {
        report_backend_error(error, "the freed block is not reused until an event can be recorded");
        block->event_failure_reported = true;
      }
      return false;
    }
    uses.clear();
    block->event_failure_reported = false;
    return true;
  }

  bool event_complete(Event event, Block* block) {
    try {
      return events_->is_complete(event);
    } catch (const std::exception& error) {
      if (!block->event_failure_reported) {
        report_backend_error(error, "the freed block waits, and is asked again later");
        block->event_failure_reported = true;
      }
      return false;
    }
  }

  void process_events() {
    auto waiting = awaiting_events_.begin();
    for (Block* block : awaiting_events_) {
      if (!record_use_events(block)) *waiting++ = block;  // it catches what the device throws
    }
    awaiting_events_.erase(waiting, awaiting_events_.end());
    std::vector<Block*> completed;
    auto kept = pending_.begin();
    for (auto& entry : pending_) {
      if (event_complete(entry.first, entry.second)) {
        events_->release(entry.first);
        completed.push_back(entry.second);
      } else {
        *kept++ = entry;
      }
    }
    pending_.erase(kept, pending_.end());
    for (Block* block : completed) {
      if (--block->pending_events == 0 && block->stream_uses.empty()) retire(block);
    }
  }

  void report_backend_error(const std::exception& error, const char* consequence) {
    ++stats_.backend_errors;
    std::fprintf(stderr, "%s; %s\n", error.what(), consequence);
  }

  void release_segment(Block* block) {
    backend_->deallocate(block->ptr, block->size);
    ++stats_.backend_frees;
    stats_.reserved_bytes.decrease(static_cast<std::int64_t>(block->size));
    stats_.segments.decrease(1);
    segments_.erase(reinterpret_cast<std::uintptr_t>(block->ptr));
    record_trace(TraceEntry::Action::kSegmentFree, block->ptr, block->size, block->stream);
    delete_block(block);
  }

  // What a release does when the backend will not take a segment back: throw the first such error
  // once the rest is released (empty_cache, set_budget), or report it and go on (a release before
  // a request fails: the request may still be met, and is otherwise out of memory).
  enum class OnFailure { kThrow, kReport };

  // Returns every free whole segment to the backend, and the free granules of the growable ones;
  // the bytes released. A segment the backend will not take back stays cached.
  std::size_t release_cached_segments(OnFailure on_failure) {
    std::vector<Block*> whole;
    for (BlockPool* pool : {&small_, &large_}) {
      for (Block* block : pool->blocks) {
        if (block->is_whole_segment() && !block->growable) whole.push_back(block);
      }
    }
    std::size_t released = 0;
    std::optional<BackendError> first_failure;
    for (Block* block : whole) {
      BlockPool& pool = *block->pool;
      release_node(pool.blocks.extract(block));
      const std::size_t size = block->size;
      try {
        release_segment(block);
        released += size;
      } catch (const BackendError& error) {
        insert_free(pool, block);
        if (!first_failure) first_failure = error;
      }
    }
    UnmapPass pass(*events_);
    released += shrink_growable_segments(pass);
    if (pass.failure() && !first_failure) first_failure = pass.failure();
    // Memory was given back on purpose: reclaiming holes keeps the level it went down to.
    reserved_high_water_ = static_cast<std::size_t>(stats_.reserved_bytes.current);
    if (first_failure) {
      if (on_failure == OnFailure::kThrow) throw *first_failure;
      report_backend_error(*first_failure, "what it holds stays cached");
    }
    return released;
  }

  // --- Growable segments (the vmm layout; mutex_ held) ---
  //
  // Note [Growable segments]
  // In the vmm layout each stream's requests come from one segment of address space the size of
  // vm_->reservation(), reserved at the stream's first request. Its blocks tile
  // [base, base + extent), extent a multiple of the granularity (2 MiB), and `last` is the block
  // that ends there. Memory backs the extent granule by granule (`backed`): every granule an
  // allocated block touches is backed; a free block may have granules that are not. Reserved
  // bytes are the backed granules.
  // - A request no free block serves grows the extent at the end by what it needs beyond a free
  //   last block, backing the new granules, and takes the last block: large requests cost
  //   reserved bytes in 2 MiB granules, not in 20 MiB segments, and what one step frees the next
  //   reuses in place.
  // - A free block handed out has the granules it lacks backed first (within the budget, else it
  //   is passed over like a block that does not fit).
  // - When memory is released (empty_cache, over budget, before a request fails), every granule
  //   that lies wholly inside a free block is unmapped, and the extent shrinks to the first
  //   granule boundary in a free last block: holes inside the segment go back too, not only its
  //   tail.
  // - Before backing granules takes reserved bytes past their high-water mark, free blocks give
  //   theirs back first (Note [Reclaiming holes]).
  // A steady state backs and unmaps nothing, as the classic layout allocates nothing. Small
  // requests come from the same segment (pool_for); backend_ serves only the classic layout.

  struct GrowableSegment {
    char* base = nullptr;
    std::size_t reserved = 0;   // address space
    std::size_t extent = 0;     // bytes from base that blocks tile
    std::vector<bool> backed;   // per granule of the extent
    Block* last = nullptr;      // null while the extent is empty
  };

  bool growable_base(std::uintptr_t start) const {
    for (const auto& [stream, segment] : growable_) {
      if (reinterpret_cast<std::uintptr_t>(segment.base) == start) return true;
    }
    return false;
  }

  // The stream's growable segment, reserved on first use; nullptr when no address space is left.
  GrowableSegment* growable_segment(Stream stream) {
    auto it = growable_.find(stream);
    if (it != growable_.end()) return &it->second;
    const std::size_t bytes = vm_->reservation();
    void* base = vm_->reserve(bytes);
    if (base == nullptr) return nullptr;
    GrowableSegment& segment = growable_[stream];
    segment.base = static_cast<char*>(base);
    segment.reserved = bytes;
    return &segment;
  }

  // The granules [first, end) of `segment` that [from, to) overlaps.
  std::pair<std::size_t, std::size_t> granules_over(const GrowableSegment& segment,
                                                    const char* from, const char* to) const {
    const std::size_t granule = vm_->granularity();
    return {static_cast<std::size_t>(from - segment.base) / granule,
            round_up(static_cast<std::size_t>(to - segment.base), granule) / granule};
  }

  std::size_t unbacked_bytes(const GrowableSegment& segment, const char* from,
                             const char* to) const {
    const auto [first, end] = granules_over(segment, from, to);
    std::size_t missing = 0;
    for (std::size_t g = first; g < end; ++g) missing += !segment.backed[g];
    return missing * vm_->granularity();
  }

  // Backs every granule [from, to) overlaps; false when the budget or the device refuses (what
  // was backed before that stays backed, free, for a later release).
  bool back(GrowableSegment& segment, const char* from, const char* to, Stream stream) {
    if (!fits_budget(unbacked_bytes(segment, from, to))) return false;
    const std::size_t granule = vm_->granularity();
    const auto [first, end] = granules_over(segment, from, to);
    for (std::size_t g = first; g < end;) {
      if (segment.backed[g]) {
        ++g;
        continue;
      }
      std::size_t run = g;
      while (run < end && !segment.backed[run]) ++run;
      char* at = segment.base + g * granule;
      const std::size_t bytes = (run - g) * granule;
      if (!vm_->map(at, bytes)) return false;
      for (std::size_t i = g; i < run; ++i) segment.backed[i] = true;
      ++stats_.backend_allocs;
      stats_.reserved_bytes.increase(static_cast<std::int64_t>(bytes));
      note_reserved_growth();
      record_trace(TraceEntry::Action::kSegmentAlloc, at, bytes, stream);
      g = run;
    }
    return true;
  }

  // Note [Unmapping waits for the stream]
  // A block freed on a stream may still be read by kernels queued before its free, and unmapping,
  // unlike cudaFree, does not wait for them. So before the first granule of a stream's segment is
  // unmapped, that stream is synchronised; once per release or reclaim, however many runs of
  // granules go.
  // - The stream is enough: a block used on other streams (record_stream) is free only once their
  //   events have completed. Not the device: that would also wait for streams that have nothing
  //   to do with the memory (a collective's, say, whose progress may need this very allocator).
  // - kUnorderedPool is waited for by nobody: its blocks came back only once nothing queued could
  //   use them (the shim's cudaFree waited for the device; a block of the per-thread default
  //   stream, or one cudaFreeAsync returned, waited for an event).
  // - A stream destroyed since is waited for as the device (StreamEvents::synchronize). Not
  //   covered: a destroyed stream's handle that a new stream has taken over before the old one's
  //   work finished.
  // - A stream that cannot be waited for keeps its segment's granules mapped; the other streams'
  //   go all the same, and the release or reclaim reports the first failure once it is done. So
  //   does a stream one of whose granules will not unmap even on its own: the pass leaves the rest
  //   of that segment alone rather than ask a failing device again, granule by granule.
  class UnmapPass {
   public:
    explicit UnmapPass(StreamEvents& events) : events_(events) {}
    // True when `stream`'s free granules may be unmapped now: nothing queued on it can still use
    // them, and none of its segment has failed to unmap in this pass. Waits for the stream the
    // first time it is asked; false when that failed (then failure() says why).
    bool may_unmap(Stream stream) {
      for (const auto& [seen, ok] : streams_) {
        if (seen == stream) return ok;
      }
      bool ok = true;
      if (stream != kUnorderedPool) {
        try {
          events_.synchronize(stream);
        } catch (const std::exception& error) {  // never out of a free: a BackendError to report
          ok = false;
          if (!failure_) failure_ = BackendError(error.what());
        }
      }
      streams_.emplace_back(stream, ok);
      return ok;
    }
    // `stream`'s segment keeps the rest of its granules mapped until the pass is over.
    void unmap_failed(Stream stream, const BackendError& error) {
      for (auto& [seen, ok] : streams_) {
        if (seen == stream) ok = false;
      }
      if (!failure_) failure_ = error;
    }
    // The first wait or unmap that failed, if one did.
    const std::optional<BackendError>& failure() const { return failure_; }

   private:
    StreamEvents& events_;
    std::vector<std::pair<Stream, bool>> streams_;  // asked so far, and whether they may unmap
    std::optional<BackendError> failure_;
  };

  // Unmaps every backed granule that lies wholly inside [from, to) of `stream`'s segment; the
  // bytes released. Never throws: a wait or an unmap that fails is noted in `pass`, and the
  // stream's granules stay mapped.
  std::size_t unback(GrowableSegment& segment, const char* from, const char* to, Stream stream,
                     UnmapPass& pass) {
    const std::size_t granule = vm_->granularity();
    const std::size_t first = round_up(static_cast<std::size_t>(from - segment.base), granule) /
                              granule;
    const std::size_t end = static_cast<std::size_t>(to - segment.base) / granule;
    std::size_t released = 0;
    for (std::size_t g = first; g < end;) {
      if (!segment.backed[g]) {
        ++g;
        continue;
      }
      if (!pass.may_unmap(stream)) break;  // the stream's granules stay mapped
      std::size_t run = g;
      while (run < end && segment.backed[run]) ++run;
      char* at = segment.base + g * granule;
      try {
        vm_->unmap(at, (run - g) * granule);
      } catch (const std::exception& error) {
        // The device may have unmapped some of the run before it failed: granule by granule, each
        // one's state is known again (an unmapped one unmaps as a no-op).
        report_backend_error(error, "the granules are unmapped one by one");
        run = unmap_each(segment, g, run);
      }
      const std::size_t bytes = (run - g) * granule;
      for (std::size_t i = g; i < run; ++i) segment.backed[i] = false;
      if (bytes > 0) {
        ++stats_.backend_frees;
        stats_.reserved_bytes.decrease(static_cast<std::int64_t>(bytes));
        record_trace(TraceEntry::Action::kSegmentFree, at, bytes, stream);
        released += bytes;
      }
      g = run;
      if (g < end && segment.backed[g]) {
        pass.unmap_failed(stream, unmap_failed_error(segment, g));
        break;
      }
    }
    return released;
  }

  // Unmaps granules [first, end) one at a time; returns the first one that failed (still backed),
  // or `end`.
  std::size_t unmap_each(GrowableSegment& segment, std::size_t first, std::size_t end) {
    const std::size_t granule = vm_->granularity();
    for (std::size_t g = first; g < end; ++g) {
      try {
        vm_->unmap(segment.base + g * granule, granule);
      } catch (const std::exception&) {
        return g;
      }
    }
    return end;
  }

  BackendError unmap_failed_error(const GrowableSegment& segment, std::size_t granule) const {
    return BackendError("actmem: vmm: the granule at " +
                        pointer_text(segment.base + granule * vm_->granularity()) +
                        " could not be unmapped; it and its stream's other free granules stay "
                        "mapped and reserved");
  }

  // `block` (taken from its pool) ready to hand out for `size`: a growable one with every granule
  // of [ptr, ptr + size) backed. nullptr, the block back in its pool, when that cannot be done.
  Block* backed_for(Block* block, std::size_t size) {
    if (block == nullptr || !block->growable) return block;
    // What hand_out will give: the request's bytes when the rest is split off, else the whole
    // block (a remainder too small to keep, or an oversize block under max_split_size).
    const char* end = block->ptr + (should_split(*block, size) ? size : block->size);
    if (options_.reclaim_holes) reclaim_holes_for(*block, end);
    bool backed = false;
    try {
      backed = back(growable_[block->stream], block->ptr, end, block->stream);
    } catch (...) {
      insert_free(*block->pool, block);  // a device error: the block stays free, the error goes on
      throw;
    }
    if (backed) return block;
    insert_free(*block->pool, block);
    return nullptr;
  }

  // Note [Reclaiming holes]
  // Without it, a growable segment's free blocks keep their granules mapped until memory is
  // released (empty_cache, the budget, a request about to fail): under churn, a request that no
  // hole fits grows the segment while the holes stay mapped, and reserved bytes ratchet up to the
  // sum of the worst moments. So before backing a block would take reserved bytes past their
  // high-water mark, free blocks give back the granules wholly inside them first, block by block
  // until the excess is covered (each block's all, so a little more may go): the remainder
  // hand_out will split off the block itself, then the free blocks of at least a granule in pool
  // order from the end (streams by handle, each from its largest block down). Reserved bytes then
  // grow only when the granules the live blocks touch need it.
  // - A steady state maps and unmaps nothing: it never passes its high-water mark.
  // - What it costs: unmap calls, after one synchronisation of each stream whose holes go (Note
  //   [Unmapping waits for the stream]), and map calls when a reclaimed hole is used again, only
  //   in steps that would otherwise have grown the reservation, itself a map call. On CUDA that
  //   synchronisation happens on an allocation, under the allocator's lock, where without
  //   reclaiming only releases synchronise.
  //   `reclaim_holes:false` (ACTMEM_ALLOC_CONF) turns it off.
  // - The mark is the most ever reserved, except that a release sets it to what is left: memory
  //   given back on purpose is not taken again while holes could serve.
  // - A failed unmap here is reported, and the request is served by growing, as without it.
  // `block` (out of its pool) is about to be backed over [block.ptr, end).
  void reclaim_holes_for(const Block& block, const char* end) {
    GrowableSegment& segment = growable_[block.stream];
    const std::size_t missing = unbacked_bytes(segment, block.ptr, end);
    const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
    if (missing == 0 || reserved + missing <= reserved_high_water_) return;
    std::size_t excess = reserved + missing - reserved_high_water_;
    UnmapPass pass(*events_);
    // The remainder split off, if any: granules the allocated block spans stay mapped.
    if (end < block.ptr + block.size) {
      excess -= std::min(excess, unback(segment, end, block.ptr + block.size, block.stream, pass));
    }
    unmap_free_granules(excess, pass);
    if (pass.failure()) {
      report_backend_error(*pass.failure(), "its holes stay mapped; the segment grows instead");
    }
  }

  // Unmaps the granules wholly inside the free blocks of the growable segments, block by block in
  // pool order from the end (streams by handle, each from its largest block down), until `wanted`
  // bytes are released; the bytes released (a block gives all it has, so it may be more). The vmm
  // layout only: its callers (reclaim_holes_for, shrink_growable_segments) have checked vm_.
  std::size_t unmap_free_granules(std::size_t wanted, UnmapPass& pass) {
    const std::size_t granule = vm_->granularity();
    std::size_t released = 0;
    for (auto it = large_.blocks.rbegin(); released < wanted && it != large_.blocks.rend(); ++it) {
      const Block& block = **it;
      // A block under a granule holds no whole one.
      if (!block.growable || block.size < granule) continue;
      released +=
          unback(growable_[block.stream], block.ptr, block.ptr + block.size, block.stream, pass);
    }
    return released;
  }

  void note_reserved_growth() {
    reserved_high_water_ =
        std::max(reserved_high_water_, static_cast<std::size_t>(stats_.reserved_bytes.current));
  }

  // The stream segment's extent grown so that its last block (free, taken from its pool) holds
  // `size`; nullptr when the budget or the reservation refuses. The new granules are not backed
  // yet: backed_for() backs what the request needs, and if the device refuses, the grown last
  // block stays free in the pool, as any free block with unbacked granules may.
  Block* grow_segment(std::size_t size, Stream stream) {
    GrowableSegment* segment = growable_segment(stream);
    if (segment == nullptr) return nullptr;
    Block* tail = segment->last;
    // A free last block too small for the request (else take_free_block had it) is extended.
    const bool extend = tail != nullptr && tail->is_free() && tail->size < size;
    char* end = segment->base + segment->extent;
    char* start = extend ? tail->ptr : end;
    const std::size_t extent =
        round_up(static_cast<std::size_t>(start + size - segment->base), vm_->granularity());
    const std::size_t growth = extent - segment->extent;
    if (extent > segment->reserved) return nullptr;
    if (!fits_budget(growth + unbacked_bytes(*segment, start, end))) return nullptr;
    const std::size_t old_extent = segment->extent;
    segment->extent = extent;
    segment->backed.resize(extent / vm_->granularity(), false);
    if (old_extent == 0) stats_.segments.increase(1);
    segments_[reinterpret_cast<std::uintptr_t>(segment->base)] = segment->extent;
    if (extend) {
      release_node(large_.blocks.extract(tail));
      tail->size += growth;
      return tail;
    }
    Block* block = new_block();
    block->ptr = end;
    block->size = growth;
    block->stream = stream;
    block->pool = &large_;
    block->growable = true;
    block->prev = tail;
    if (tail != nullptr) tail->next = block;
    segment->last = block;
    return block;
  }

  // Unmaps the granules wholly inside free blocks of the growable segments, and trims each
  // segment's extent to the first granule boundary in a free last block; the bytes released.
  // Streams that could not be waited for, or whose granules would not unmap, keep their granules
  // and extent (pass.failure()).
  std::size_t shrink_growable_segments(UnmapPass& pass) {
    if (!vm_) return 0;
    std::size_t released = unmap_free_granules(std::numeric_limits<std::size_t>::max(), pass);
    const std::size_t granule = vm_->granularity();
    for (auto& [stream, segment] : growable_) {
      Block* tail = segment.last;
      if (tail == nullptr || !tail->is_free()) continue;
      const std::size_t extent =
          round_up(static_cast<std::size_t>(tail->ptr - segment.base), granule);
      if (extent >= segment.extent) continue;
      const auto still_backed = std::find(segment.backed.begin() + extent / granule,
                                          segment.backed.end(), true);
      // Its stream could not be waited for, or one of its granules would not unmap.
      if (still_backed != segment.backed.end()) continue;
      char* from = segment.base + extent;  // everything from here on is unbacked
      release_node(large_.blocks.extract(tail));
      if (from == tail->ptr) {
        segment.last = tail->prev;
        if (segment.last != nullptr) segment.last->next = nullptr;
        delete_block(tail);
      } else {
        tail->size = static_cast<std::size_t>(from - tail->ptr);
        insert_free(large_, tail);
      }
      segment.extent = extent;
      segment.backed.resize(extent / granule);
      const auto base = reinterpret_cast<std::uintptr_t>(segment.base);
      if (segment.extent == 0) {
        segments_.erase(base);
        stats_.segments.decrease(1);
      } else {
        segments_[base] = segment.extent;
      }
    }
    return released;
  }

  // --- Pressure and errors ---

  std::size_t shortfall_for(std::size_t size) const {
    if (!options_.budget_bytes) return size;  // the backend itself is out of memory
    const std::size_t reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
    const std::size_t smallest = smallest_segment_for(size);
    return reserved + smallest > *options_.budget_bytes
               ? reserved + smallest - *options_.budget_bytes
               : size;
  }

  // What stays reserved plus the segment a request of `size` (rounded) needs: the least budget
  // under which it could have been met now. (mutex_ held)
  std::size_t least_budget_for(std::size_t size) const {
    return static_cast<std::size_t>(stats_.reserved_bytes.current) + smallest_segment_for(size);
  }

  std::size_t call_pressure_handlers(std::size_t bytes_needed) {
    std::shared_lock<std::shared_mutex> handlers_lock(handlers_mutex_);
    t_in_handler = true;
    struct Reset {
      ~Reset() { t_in_handler = false; }
    } reset;
    std::size_t freed = 0;
    for (auto& [id, handler] : handlers_) {
      if (freed >= bytes_needed) break;
      freed += handler(bytes_needed - freed);
    }
    return freed;
  }

  std::size_t largest_free_block() const {
    std::size_t largest = 0;
    for (const BlockPool* pool : {&small_, &large_}) {
      for (const Block* block : pool->blocks) largest = std::max(largest, block->size);
    }
    return largest;
  }

  // A request that failed, in the statistics and the trace. (mutex_ held)
  void count_out_of_memory(std::size_t bytes, Stream stream) {
    if (t_speculative) return;  // a speculative request that finds no room is no failure
    ++stats_.ooms;
    record_trace(TraceEntry::Action::kOom, nullptr, bytes, stream);
  }

  // `least_budget`: a lower bound of the budget the request needed (OutOfMemoryError).
  OutOfMemoryError out_of_memory(std::size_t bytes, Stream stream, const char* why,
                                 std::size_t least_budget) {
    count_out_of_memory(bytes, stream);
    const auto& s = stats_;
    std::string message = "actmem: out of memory: tried to allocate " +
                          format_bytes(static_cast<std::int64_t>(bytes)) + " on the " +
                          backend_->name() + " backend";
    if (options_.budget_bytes) {
      message += " within a budget of " +
                 format_bytes(static_cast<std::int64_t>(*options_.budget_bytes));
    }
    message += "; allocated " + format_bytes(s.allocated_bytes.current) + ", reserved " +
               format_bytes(s.reserved_bytes.current) + ", cached (reserved, not allocated) " +
               format_bytes(s.reserved_bytes.current - s.allocated_bytes.current) +
               ", largest free block " +
               format_bytes(static_cast<std::int64_t>(largest_free_block())) + " (" + why + ")";
    return OutOfMemoryError(message, bytes, options_.budget_bytes ? least_budget : 0);
  }

  std::map<std::uintptr_t, std::size_t>::const_iterator segment_containing(const void* ptr) const {
    const auto address = reinterpret_cast<std::uintptr_t>(ptr);
    auto it = segments_.upper_bound(address);
    if (it == segments_.begin()) return segments_.end();
    --it;
    return address < it->first + it->second ? it : segments_.end();
  }

  std::string describe_bad_pointer(const void* ptr, const char* operation) const {
    std::string message = std::string("actmem: ") + operation + "(" + pointer_text(ptr) + "): ";
    if (segment_containing(ptr) != segments_.end()) {
      return message +
             "not a live allocation, though it lies in memory actmem reserved: a double free, "
             "or a pointer into the middle of a block";
    }
    return message + "this pointer was never allocated by actmem (" + backend_->name() +
           " backend)";
  }

  Block* live_block(const void* ptr, const char* operation) const {
    auto it = live_.find(const_cast<void*>(ptr));
    if (it == live_.end()) throw InvalidPointerError(describe_bad_pointer(ptr, operation));
    return it->second;
  }

  void record_trace(TraceEntry::Action action, const void* ptr, std::size_t bytes, Stream stream) {
    if (!trace_enabled_) return;
    if (trace_.size() >= options_.trace_capacity) return;
    trace_.push_back(TraceEntry{action, reinterpret_cast<std::uintptr_t>(ptr), bytes,
                                reinterpret_cast<std::uintptr_t>(stream)});
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<VirtualMemory> vm_;  // the vmm layout's; null in the classic one
  std::unique_ptr<StreamEvents> events_;
  AllocatorOptions options_;

  mutable std::mutex mutex_;  // guards everything below except the handlers
  BlockPool small_{true};
  BlockPool large_{false};
  std::unordered_map<void*, Block*> live_;
  std::vector<PoolNode> spare_pool_nodes_;
  std::vector<LiveNode> spare_live_nodes_;
  std::vector<Block*> spare_blocks_;
  std::vector<std::pair<Event, Block*>> pending_;  // freed blocks waiting on other streams
  std::vector<Block*> awaiting_events_;  // freed blocks whose events could not yet be recorded
  std::map<std::uintptr_t, std::size_t> segments_;  // start -> size (a growable one's: mapped)
  std::map<Stream, GrowableSegment> growable_;
  AllocatorStats stats_;
  std::size_t reserved_high_water_ = 0;  // Note [Reclaiming holes]
  bool trace_enabled_ = false;
  std::vector<TraceEntry> trace_;
  std::size_t handler_count_ = 0;

  // Held shared while handlers run (never together with mutex_), exclusively to change them.
  std::shared_mutex handlers_mutex_;
  std::vector<std::pair<HandlerId, PressureHandler>> handlers_;
  HandlerId next_handler_id_ = 1;
};

void CachingAllocator::Impl::check_invariants() {
  std::lock_guard<std::mutex> lock(mutex_);
  auto fail = [](const std::string& what) { throw std::logic_error("actmem invariant: " + what); };
  std::vector<const Block*> blocks;
  for (const BlockPool* pool : {&small_, &large_}) {
    for (const Block* b : pool->blocks) {
      if (!b->is_free()) fail("a block in a pool is not free");
      if (b->pool != pool) fail("a block sits in the wrong pool");
      blocks.push_back(b);
    }
  }
  std::int64_t allocated = 0;
  for (const auto& [ptr, b] : live_) {
    if (!b->allocated || b->ptr != ptr) fail("the live map disagrees with its block");
    allocated += static_cast<std::int64_t>(b->size);
    blocks.push_back(b);
  }
  std::map<const Block*, int> events_of;  // pending_ entries per block
  for (const auto& [event, b] : pending_) {
    if (b->allocated) fail("a block waiting on another stream is still allocated");
    ++events_of[b];
    blocks.push_back(b);
  }
  for (const Block* b : awaiting_events_) {
    if (b->allocated || b->stream_uses.empty()) fail("a block awaiting an event is not one");
    if (std::count(awaiting_events_.begin(), awaiting_events_.end(), b) != 1) {
      fail("a block awaits its events twice");
    }
    blocks.push_back(b);
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const Block* a, const Block* b) { return a->ptr < b->ptr; });
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  if (allocated != stats_.allocated_bytes.current) fail("allocated bytes do not add up");

  std::int64_t reserved = 0;
  std::size_t index = 0;
  for (const auto& [start, size] : segments_) {
    if (!growable_base(start)) reserved += static_cast<std::int64_t>(size);
    const char* cursor = reinterpret_cast<const char*>(start);
    const Block* previous = nullptr;
    while (cursor < reinterpret_cast<const char*>(start) + size) {
      if (index >= blocks.size() || blocks[index]->ptr != cursor) {
        fail("the blocks do not tile a segment (gap or overlap)");
      }
      const Block* b = blocks[index++];
      const auto events = events_of.find(b);
      if (b->pending_events != (events == events_of.end() ? 0 : events->second)) {
        fail("a block's pending events do not match its entries");
      }
      if (b->prev != previous) fail("a block's prev link is wrong");
      if (previous != nullptr && previous->next != b) fail("a block's next link is wrong");
      if (previous != nullptr && previous->is_free() && b->is_free()) {
        fail("two free neighbours were not merged");
      }
      if (reinterpret_cast<std::uintptr_t>(b->ptr) % Backend::kAlignment != 0) {
        fail("a block is misaligned");
      }
      previous = b;
      cursor += b->size;
    }
    if (cursor != reinterpret_cast<const char*>(start) + size) fail("a block overruns its segment");
    if (previous != nullptr && previous->next != nullptr) fail("a segment's last block has a next");
  }
  if (index != blocks.size()) fail("a block lies outside every segment");
  for (const auto& [stream, segment] : growable_) {
    const Block* last = segment.last;
    if ((segment.extent == 0) != (last == nullptr)) fail("a growable segment's last block is wrong");
    if (last != nullptr && (last->ptr + last->size != segment.base + segment.extent ||
                            last->next != nullptr || !last->growable)) {
      fail("a growable segment's last block does not end its extent");
    }
    if (segment.extent % vm_->granularity() != 0 ||
        segment.backed.size() != segment.extent / vm_->granularity()) {
      fail("a growable segment's extent is not whole granules");
    }
    for (const bool backed : segment.backed) {
      reserved += backed ? static_cast<std::int64_t>(vm_->granularity()) : 0;
    }
  }
  for (const Block* b : blocks) {
    if (!b->growable || b->is_free()) continue;
    const GrowableSegment& segment = growable_.at(b->stream);
    if (unbacked_bytes(segment, b->ptr, b->ptr + b->size) != 0) {
      fail("a block in use lies on an unbacked granule");
    }
  }
  if (reserved != stats_.reserved_bytes.current) fail("reserved bytes do not add up");
}

CachingAllocator::CachingAllocator(std::unique_ptr<Backend> backend,
                                   std::unique_ptr<StreamEvents> events, AllocatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(backend), nullptr, std::move(events), options)) {}
CachingAllocator::CachingAllocator(std::unique_ptr<Backend> backend,
                                   std::unique_ptr<VirtualMemory> virtual_memory,
                                   std::unique_ptr<StreamEvents> events, AllocatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(backend), std::move(virtual_memory),
                                   std::move(events), options)) {
  if (!impl_->virtual_memory()) {
    throw std::invalid_argument("actmem: the vmm layout needs a VirtualMemory");
  }
}
CachingAllocator::CachingAllocator(std::unique_ptr<Backend> backend, AllocatorOptions options)
    : CachingAllocator(std::move(backend), std::make_unique<ImmediateEvents>(), options) {}
CachingAllocator::~CachingAllocator() = default;

CachingAllocator::Speculative::Speculative() : previous_(t_speculative) { t_speculative = true; }
CachingAllocator::Speculative::~Speculative() { t_speculative = previous_; }

void* CachingAllocator::allocate(std::size_t bytes, Stream stream) {
  return impl_->allocate(bytes, stream);
}
void CachingAllocator::deallocate(void* ptr) { impl_->deallocate(ptr); }
void CachingAllocator::record_stream(void* ptr, Stream stream) { impl_->record_stream(ptr, stream); }
std::size_t CachingAllocator::block_size(const void* ptr) const { return impl_->block_size(ptr); }
bool CachingAllocator::owns(const void* ptr) const { return impl_->owns(ptr); }
bool CachingAllocator::in_reserved_memory(const void* ptr) const {
  return impl_->in_reserved_memory(ptr);
}
void CachingAllocator::empty_cache() { impl_->empty_cache(); }
void CachingAllocator::set_budget(std::optional<std::size_t> bytes) { impl_->set_budget(bytes); }
std::optional<std::size_t> CachingAllocator::budget() const { return impl_->budget(); }
CachingAllocator::HandlerId CachingAllocator::add_pressure_handler(PressureHandler handler) {
  return impl_->add_pressure_handler(std::move(handler));
}
void CachingAllocator::remove_pressure_handler(HandlerId id) { impl_->remove_pressure_handler(id); }
AllocatorStats CachingAllocator::stats() const { return impl_->stats(); }
void CachingAllocator::reset_peak_stats() { impl_->reset_peak_stats(); }
void CachingAllocator::set_trace_enabled(bool enabled) { impl_->set_trace_enabled(enabled); }
bool CachingAllocator::trace_enabled() const { return impl_->trace_enabled(); }
std::vector<TraceEntry> CachingAllocator::trace(std::size_t first) const {
  return impl_->trace(first);
}
std::size_t CachingAllocator::trace_size() const { return impl_->trace_size(); }
void CachingAllocator::clear_trace() { impl_->clear_trace(); }
const Backend& CachingAllocator::backend() const { return impl_->backend(); }
const VirtualMemory* CachingAllocator::virtual_memory() const { return impl_->virtual_memory(); }
void CachingAllocator::check_invariants() const { impl_->check_invariants(); }

}  // namespace actmem::alloc
