// Fuzzes the C ABI (actmem_alloc.h) with random sequences of allocate, free, record_stream,
// set_budget and empty_cache, checked after every operation against an independent model of
// which bytes are live:
// - a pointer handed out is 512-byte aligned and overlaps no live allocation;
// - the bytes written into an allocation are still there when it is freed;
// - the requested bytes the allocator reports equal the sum the model holds;
// - a NULL from actmem_malloc comes with an out-of-memory message (only a budget refuses here).
// Every input frees what it allocated and lifts its budget, so inputs do not leak into each other
// beyond the cache, which is the point. Run with ACTMEM_BACKEND=host: the model writes into what
// it is handed.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "allocator/actmem_alloc.h"

namespace {

constexpr std::size_t MiB = 1024 * 1024;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "c_api_fuzzer: %s\n", what.c_str());
  std::abort();
}

// Reads the input a byte at a time; 0 once it is used up.
class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  std::uint8_t next() { return at_ < size_ ? data_[at_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

struct Allocation {
  std::size_t size;
  unsigned char fill;
};

cudaStream_t stream(std::uint8_t id) { return reinterpret_cast<cudaStream_t>(0x100 * (id % 3 + 1)); }

long long requested_bytes() {
  const std::string json = actmem_stats_json();
  const std::string key = "\"requested_bytes\":{\"current\":";
  const std::size_t at = json.find(key);
  if (at == std::string::npos) {
    if (json == "{\"devices\":{}}") return 0;  // nothing allocated yet in this process
    finding("no requested_bytes in the stats: " + json);
  }
  return std::atoll(json.c_str() + at + key.size());
}

class Model {
 public:
  void allocated(void* ptr, std::size_t size, unsigned char fill) {
    const auto address = reinterpret_cast<std::uintptr_t>(ptr);
    if (address % 512 != 0) finding("a pointer is not 512-byte aligned");
    auto after = live_.lower_bound(ptr);
    if (after != live_.end() && reinterpret_cast<std::uintptr_t>(after->first) < address + size) {
      finding("an allocation overlaps the next live one");
    }
    if (after != live_.begin()) {
      const auto before = std::prev(after);
      if (reinterpret_cast<std::uintptr_t>(before->first) + before->second.size > address) {
        finding("an allocation overlaps the previous live one");
      }
    }
    std::memset(ptr, fill, size < 256 ? size : 256);
    static_cast<unsigned char*>(ptr)[size - 1] = fill;
    live_[ptr] = {size, fill};
    requested_ += size;
  }

  // The live allocation `index` modulo the count, or nullptr.
  void* pick(std::uint8_t index) const {
    if (live_.empty()) return nullptr;
    auto it = live_.begin();
    std::advance(it, index % live_.size());
    return it->first;
  }

  void freeing(void* ptr) {
    const Allocation a = live_.at(ptr);
    const auto* bytes = static_cast<const unsigned char*>(ptr);
    for (std::size_t i = 0; i < (a.size < 256 ? a.size : 256); ++i) {
      if (bytes[i] != a.fill) finding("a live allocation was overwritten");
    }
    if (bytes[a.size - 1] != a.fill) finding("a live allocation's last byte was overwritten");
    live_.erase(ptr);
    requested_ -= a.size;
  }

  void check() const {
    if (requested_bytes() != static_cast<long long>(requested_)) {
      finding("the stats' requested bytes differ from the model's: " +
              std::to_string(requested_bytes()) + " against " + std::to_string(requested_));
    }
  }

  std::vector<void*> live() const {
    std::vector<void*> all;
    for (const auto& entry : live_) all.push_back(entry.first);
    return all;
  }

 private:
  std::map<void*, Allocation> live_;
  std::size_t requested_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes input(data, size);
  Model model;
  const long long baseline = requested_bytes();
  if (baseline != 0) finding("an earlier input left requested bytes behind");
  unsigned char fill = 1;
  for (int ops = 0; !input.done() && ops < 512; ++ops) {
    switch (input.next() % 6) {
      case 0: {  // allocate: up to 32 MiB, most of them small
        const std::uint8_t shift = input.next() % 26;
        const std::size_t bytes = (std::size_t{input.next()} + 1) << shift;
        const std::size_t capped = bytes > 32 * MiB ? 32 * MiB : bytes;
        void* ptr = actmem_malloc(capped, 0, stream(input.next()));
        if (ptr == nullptr) {
          const char* error = actmem_last_error();
          if (error == nullptr || std::strstr(error, "out of memory") == nullptr) {
            finding(std::string("NULL without an out-of-memory message: ") +
                    (error ? error : "(none)"));
          }
        } else {
          model.allocated(ptr, capped, fill++);
        }
        break;
      }
      case 1:  // free
        if (void* ptr = model.pick(input.next())) {
          model.freeing(ptr);
          actmem_free(ptr, 0, 0, nullptr);
        }
        break;
      case 2:  // record_stream
        if (void* ptr = model.pick(input.next())) actmem_record_stream(ptr, 0, stream(input.next()));
        break;
      case 3: {  // set_budget: none, or 2..129 MiB
        const std::uint8_t value = input.next();
        actmem_set_budget(0, value % 8 == 0 ? 0 : (value % 128 + 2) * MiB);
        break;
      }
      case 4:
        actmem_empty_cache();
        break;
      default:
        break;
    }
    model.check();
  }
  for (void* ptr : model.live()) {
    model.freeing(ptr);
    actmem_free(ptr, 0, 0, nullptr);
  }
  actmem_set_budget(0, 0);
  model.check();
  return 0;
}
