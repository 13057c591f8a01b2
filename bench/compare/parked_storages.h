// The device memory a training run holds between its steps (weights, gradients, optimizer state,
// the batch), moved out to host memory and back, so that several runs can take turns on one
// device allocator and each step sees only its own run's bytes: the main job interleaves its
// rows so, and a budget then caps what one row holds, as if it ran alone.
//
// It works storage by storage: every tensor and view over a parked storage (the LSTM's flat
// weights, weight.t()) follows it, and its bytes come back bit for bit. Nothing may use a parked
// storage; the host copies are plain host memory (never the device allocator, which is c10's CPU
// allocator where actmem manages the CPU).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/StorageImpl.h>

#include <vector>

namespace actmem::bench {

class ParkedStorages {
 public:
  ParkedStorages() = default;
  ParkedStorages(const ParkedStorages&) = delete;
  ParkedStorages& operator=(const ParkedStorages&) = delete;
  // Storages still parked keep their host copies, freed with them: their owners must not use
  // them again (a training run being destroyed does not).
  ~ParkedStorages() = default;

  // Copies the bytes of every storage under `tensors` (undefined tensors skipped, each storage
  // once) to host memory and returns their device memory to its allocator.
  void park(const std::vector<at::Tensor>& tensors);
  // Gives each parked storage fresh memory from its allocator and copies its bytes back. All or
  // nothing: when an allocation fails (out of memory under a budget), every storage stays parked
  // and the error propagates.
  void unpark();
  bool parked() const { return !entries_.empty(); }

 private:
  struct Entry {
    c10::intrusive_ptr<c10::StorageImpl> storage;
    c10::Device device;  // the storage's own, while its DataPtr says CPU
  };
  std::vector<Entry> entries_;
};

}  // namespace actmem::bench
