// The copy engine on CUDA: cudaMemcpyAsync on a side stream of its own (non-blocking), each copy
// after an event recorded on the `after` stream, and between two events recorded around it: the
// last one is what finished() queries and order_after() makes other streams wait for, so the host
// never blocks for a copy unless wait() asks it to. Host buffers should be pinned
// (copy/pinned_backend.h) for the copies to be asynchronous and to overlap compute. Compiled only
// when the CUDA toolkit is found.
//
// Time, read from the events without waiting for them: a copy's time runs from its start event to
// its done event. A stream ordered after a copy still running gets an event of its own first,
// where it reached the wait; it stalled for as long as the copy's done event came after that one.
#pragma once

#include <cuda_runtime_api.h>

#include <mutex>
#include <map>
#include <vector>

#include "copy/copy_engine.h"

namespace actmem::copy {

class CudaCopyEngine final : public CopyEngine {
 public:
  // Creates the side stream on `device`. Throws std::runtime_error naming the CUDA error.
  explicit CudaCopyEngine(int device);
  ~CudaCopyEngine() override;
  CudaCopyEngine(const CudaCopyEngine&) = delete;
  CudaCopyEngine& operator=(const CudaCopyEngine&) = delete;

  Ticket copy(void* dst, const void* src, std::size_t bytes, alloc::Stream after) override;
  bool finished(Ticket ticket) override;
  void order_after(Ticket ticket, alloc::Stream stream) override;
  void wait(Ticket ticket) override;
  Time time() override;
  alloc::Stream stream() const override { return stream_; }
  const char* name() const override { return "cuda"; }

 private:
  struct Flight {
    cudaEvent_t start = nullptr, done = nullptr;
    cudaEvent_t reached = nullptr;  // where a stream ordered after it reached the wait, if one did
  };
  // mutex_ held by all of these.
  cudaEvent_t take_event();
  void recycle(cudaEvent_t event);
  // The flight of copy `ticket`, or nullptr once it is known to have finished.
  Flight* flight(Ticket ticket);
  // Settles the flights up to `ticket`, which has finished: counts their copy time, and sets their
  // stalls aside until the waiting stream's event has completed too.
  void settle(Ticket ticket);
  // Counts the stalls whose events have both completed.
  void settle_stalls();

  int device_;
  cudaStream_t stream_ = nullptr;
  std::mutex mutex_;
  Ticket issued_ = 0;
  std::map<Ticket, Flight> in_flight_;  // not known to have finished, oldest first
  std::vector<Flight> stalls_;          // finished, their waiting stream's event maybe not yet
  std::vector<cudaEvent_t> spare_;
  Time time_;
};

}  // namespace actmem::copy
