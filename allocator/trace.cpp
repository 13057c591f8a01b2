#include "allocator/trace.h"

#include <istream>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"

namespace actmem::alloc {

namespace {
constexpr const char* kActionNames[] = {"alloc", "free", "segment_alloc", "segment_free", "oom"};
}

const char* to_string(TraceEntry::Action action) {
  return kActionNames[static_cast<int>(action)];
}

void write_trace(std::ostream& out, const std::vector<TraceEntry>& trace) {
  for (const TraceEntry& e : trace) {
    out << to_string(e.action) << " 0x" << std::hex << e.address << std::dec << ' ' << e.bytes
        << " 0x" << std::hex << e.stream << std::dec << '\n';
  }
}

std::vector<TraceEntry> read_trace(std::istream& in) {
  std::vector<TraceEntry> trace;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string action;
    TraceEntry entry{};
    fields >> action >> std::hex >> entry.address >> std::dec >> entry.bytes >> std::hex >>
        entry.stream;
    bool known = false;
    for (int a = 0; a < 5; ++a) {
      if (action == kActionNames[a]) {
        entry.action = static_cast<TraceEntry::Action>(a);
        known = true;
      }
    }
    if (!known || fields.fail()) {
      throw std::runtime_error("actmem trace: line " + std::to_string(number) +
                               " is not '<action> <address> <bytes> <stream>': '" + line + "'");
    }
    trace.push_back(entry);
  }
  return trace;
}

ReplayResult replay(const std::vector<TraceEntry>& trace, CachingAllocator& allocator) {
  ReplayResult result;
  std::unordered_map<std::uintptr_t, void*> live;  // address in the trace -> address now
  std::unordered_set<std::uintptr_t> failed;       // allocations that ran out of memory here
  for (const TraceEntry& e : trace) {
    if (e.action == TraceEntry::Action::kAlloc) {
      try {
        live[e.address] = allocator.allocate(e.bytes, reinterpret_cast<Stream>(e.stream));
        ++result.allocations;
      } catch (const OutOfMemoryError&) {
        failed.insert(e.address);
        ++result.ooms;
      }
    } else if (e.action == TraceEntry::Action::kFree) {
      auto it = live.find(e.address);
      if (it == live.end()) {
        if (failed.erase(e.address) != 0) continue;
        throw std::invalid_argument("actmem trace replay: free of an address the trace never "
                                    "allocated");
      }
      allocator.deallocate(it->second);
      live.erase(it);
      ++result.frees;
    }
  }
  for (auto& [address, ptr] : live) allocator.deallocate(ptr);
  return result;
}

}  // namespace actmem::alloc
