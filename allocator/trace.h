// An event trace of the allocator: recorded while it runs, written as text, replayed later.
//
// The trace is what benchmarks replay to measure the allocator on a real workload's pattern, and
// what a person reads to see why memory ran out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "allocator/stream_events.h"

namespace actmem::alloc {

class CachingAllocator;

struct TraceEntry {
  enum class Action : std::uint8_t { kAlloc, kFree, kSegmentAlloc, kSegmentFree, kOom };
  Action action;
  std::uintptr_t address;  // the block or segment (0 for kOom)
  std::size_t bytes;  // as requested (kAlloc, kOom), as reserved (segments), the block's (kFree)
  std::uintptr_t stream;

  bool operator==(const TraceEntry& other) const {
    return action == other.action && address == other.address && bytes == other.bytes &&
           stream == other.stream;
  }
};

const char* to_string(TraceEntry::Action action);

// One line per entry: "<action> <address hex> <bytes> <stream hex>".
void write_trace(std::ostream& out, const std::vector<TraceEntry>& trace);
// Reads what write_trace wrote; throws std::runtime_error naming the line on malformed input.
std::vector<TraceEntry> read_trace(std::istream& in);

struct ReplayResult {
  std::size_t allocations = 0;
  std::size_t frees = 0;
  std::size_t ooms = 0;  // allocations of the trace that failed in the replay
};

// Replays the kAlloc and kFree entries of `trace` on `allocator` (segment and OOM entries are
// the recording allocator's own doings and are skipped). Blocks still live at the end of the trace
// are freed, so a replay can be repeated. Throws std::invalid_argument if the trace frees an
// address it never allocated.
ReplayResult replay(const std::vector<TraceEntry>& trace, CachingAllocator& allocator);

}  // namespace actmem::alloc
