// Streams and the events that tell when work queued on them has finished.
//
// The caching core never looks inside a stream: it is an opaque handle (cudaStream_t on CUDA, any
// token on the host backend) that it hands back to StreamEvents, never to anything else. A block
// freed after use on other streams (record_stream) returns to its pool only when an event recorded
// on each of those streams at free time has completed.
#pragma once

#include <cstdint>

namespace actmem::alloc {

using Stream = void*;
inline constexpr Stream kDefaultStream = nullptr;
// The key of memory that no stream orders: a block is back in its pool only once nothing queued on
// the device can use it (the LD_PRELOAD shim's cudaMalloc pool: its cudaFree waits for the device,
// and a cudaFreeAsync of such a block waits for an event first). No event is ever recorded on it
// and nothing waits for it: it is no stream, and never reaches CUDA.
inline const Stream kUnorderedPool = reinterpret_cast<Stream>(~std::uintptr_t{0});

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
  // Blocks until the work queued on `stream` so far has completed (a stream that no longer exists:
  // until the device's has); throws BackendError when the device cannot say. What unmapping a
  // growable segment's granules waits for (Note [Unmapping waits for the stream]).
  virtual void synchronize(Stream stream) = 0;
  // A stream that orders, whichever thread uses it, what `stream` orders on the calling thread:
  // `stream` itself, except for a handle that names a different stream on each thread (CUDA's
  // per-thread default stream), which can key no pool: a block one thread freed on its stream
  // would serve another thread's at once, while the first thread's work may still use it. The
  // caching allocator serves such a handle from kUnorderedPool, as a block used on the stream
  // returned here (record_stream), so its free waits for an event on that stream, whichever
  // thread records it.
  virtual Stream across_threads(Stream stream) { return stream; }
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
