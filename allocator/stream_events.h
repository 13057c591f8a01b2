// Streams and the events that tell when work queued on them has finished.
//
// The caching core never looks inside a stream: it is an opaque handle (cudaStream_t on CUDA, any
// token on the host backend). A block freed after use on other streams (record_stream) returns to
// its pool only when an event recorded on each of those streams at free time has completed.
#pragma once

#include <cstdint>

namespace actmem::alloc {

using Stream = void*;
inline constexpr Stream kDefaultStream = nullptr;

using Event = void*;

class StreamEvents {
 public:
  virtual ~StreamEvents() = default;
  // Records an event after the work queued on `stream` so far.
  virtual Event record(Stream stream) = 0;
  // True once that work has completed. Never blocks.
  virtual bool is_complete(Event event) = 0;
  // Releases an event from record(); called once per event.
  virtual void release(Event event) = 0;
  // Blocks until the work queued on `stream` so far has completed; throws AllocatorError when
  // the device cannot say. What unmapping a growable segment's granules waits for.
  virtual void synchronize(Stream stream) = 0;
};

// Host streams run nothing asynchronously: every event is complete when recorded.
class ImmediateEvents final : public StreamEvents {
 public:
  Event record(Stream /*stream*/) override { return nullptr; }
  bool is_complete(Event /*event*/) override { return true; }
  void release(Event /*event*/) override {}
  void synchronize(Stream /*stream*/) override {}
};

}  // namespace actmem::alloc
