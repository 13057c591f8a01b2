// Copies between device and host memory that run in the background, in the order they were asked
// for: what the host store's offload pipeline (hooks/host_store.h) issues its device-to-host and
// host-to-device copies through.
//
// Three implementations behind this interface:
// - ThreadCopyEngine: a worker thread that memcpy's in the background, as the CUDA engine copies
//   beside compute: the pipeline's ordering, window and stall accounting run over it (and over a
//   test engine) in every CI run;
// - InlineCopyEngine: memcpy on the calling thread, the CPU build's default (see why there);
// - CudaCopyEngine: cudaMemcpyAsync on a side stream, ordered against the compute stream by events;
//   the host never waits for a copy unless asked to.
#pragma once

#include <cstddef>
#include <cstdint>

#include "allocator/stream_events.h"

namespace actmem::copy {

class CopyEngine {
 public:
  using Ticket = std::uint64_t;  // 1, 2, 3... in the order copies were queued; 0 is none

  virtual ~CopyEngine() = default;

  // Queues a copy of `bytes` from `src` to `dst`, to start once the work queued on `after` so far
  // and every copy queued before it have finished. Never waits for the copy. Both buffers must
  // stay valid, and unused by anything else, until it has finished. Throws std::runtime_error
  // when the copy cannot be queued.
  virtual Ticket copy(void* dst, const void* src, std::size_t bytes, alloc::Stream after) = 0;

  // True once copy `ticket` has finished (its destination holds the bytes). Never blocks.
  virtual bool finished(Ticket ticket) = 0;

  // Work queued on `stream` from now on runs after copy `ticket`. The CUDA engine makes the stream
  // wait for the copy's event and the host goes on; the thread engine waits on the host. Either
  // wait counts in time().exposed_ns.
  virtual void order_after(Ticket ticket, alloc::Stream stream) = 0;

  // Waits on the host until copy `ticket` has finished; the wait counts in time().exposed_ns.
  virtual void wait(Ticket ticket) = 0;

  // Copy time so far, over the copies known to have finished (a copy still running counts once a
  // later call finds it done). copying_ns - exposed_ns is the copy time hidden behind compute.
  struct Time {
    std::int64_t copying_ns = 0;  // how long the copies ran
    std::int64_t exposed_ns = 0;  // how long work ordered after them waited for them
  };
  // Never blocks.
  virtual Time time() = 0;

  // The stream the copies run on (kDefaultStream for the thread engine): a buffer a copy reads or
  // writes is in use on it.
  virtual alloc::Stream stream() const = 0;

  virtual const char* name() const = 0;
};

}  // namespace actmem::copy
