// The copy engine on CUDA: cudaMemcpyAsync on a side stream of its own (non-blocking), each copy
// after an event recorded on the `after` stream, and an event recorded after it that finished()
// queries and order_after() makes other streams wait for: the host never blocks for a copy unless
// wait() asks it to. Host buffers should be pinned (copy/pinned_backend.h) for the copies to be
// asynchronous and to overlap compute. Compiled only when the CUDA toolkit is found.
#pragma once

#include <cuda_runtime_api.h>

#include <mutex>
#include <unordered_map>
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
  std::int64_t order_after(Ticket ticket, alloc::Stream stream) override;
  void wait(Ticket ticket) override;
  alloc::Stream stream() const override { return stream_; }
  const char* name() const override { return "cuda"; }

 private:
  cudaEvent_t take_event();  // mutex_ held
  // The event recorded after copy `ticket`, or nullptr once it is known to have finished.
  cudaEvent_t done_event(Ticket ticket);  // mutex_ held

  int device_;
  cudaStream_t stream_ = nullptr;
  std::mutex mutex_;
  Ticket issued_ = 0;
  Ticket finished_below_ = 1;  // every ticket under this one has finished
  std::unordered_map<Ticket, cudaEvent_t> in_flight_;
  std::vector<cudaEvent_t> spare_;
};

}  // namespace actmem::copy
