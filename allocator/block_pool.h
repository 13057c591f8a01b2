// Blocks and the pools of free blocks that the caching allocator searches. Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

#include "allocator/stream_events.h"

namespace actmem::alloc::detail {

struct BlockPool;

// A contiguous range inside one segment. The blocks of a segment form a doubly linked list in
// address order; a block with neither neighbour is a whole segment.
struct Block {
  char* ptr = nullptr;
  std::size_t size = 0;
  std::size_t requested = 0;  // bytes asked for, while allocated
  Stream stream = kDefaultStream;
  BlockPool* pool = nullptr;
  Block* prev = nullptr;
  Block* next = nullptr;
  bool allocated = false;
  bool growable = false;              // lies in a growable segment (Note [Growable segments])
  int pending_events = 0;             // freed, but still in use on other streams
  // Freed, its events could not be recorded or asked; said once (Note [A failed CUDA call in the
  // middle of a free]).
  bool event_failure_reported = false;
  std::vector<Stream> stream_uses;    // other streams this allocation was used on

  bool is_whole_segment() const { return prev == nullptr && next == nullptr; }
  // In the pool: neither handed out nor waiting for another stream (stream_uses left over after
  // a free: streams an event could not be recorded on yet).
  bool is_free() const { return !allocated && pending_events == 0 && stream_uses.empty(); }
};

// Orders free blocks by (stream, size, address), so lower_bound finds the best fit on a stream.
struct BlockOrder {
  bool operator()(const Block* a, const Block* b) const {
    const auto sa = reinterpret_cast<std::uintptr_t>(a->stream);
    const auto sb = reinterpret_cast<std::uintptr_t>(b->stream);
    if (sa != sb) return sa < sb;
    if (a->size != b->size) return a->size < b->size;
    return a->ptr < b->ptr;
  }
};

struct BlockPool {
  explicit BlockPool(bool small) : is_small(small) {}
  std::set<Block*, BlockOrder> blocks;
  const bool is_small;
};

}  // namespace actmem::alloc::detail
