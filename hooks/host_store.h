// Where offloaded activations live, and how they go out and come back.
//
// Note [Offload pipeline]
// An offloaded activation leaves the device soon after pack and is back before backward needs it,
// with as little of the copy time on the step's path as the copy engine (copy/copy_engine.h)
// allows:
// - offload (after pack, once the operator that saved the tensor has run: Note [An offload waits
//   for the operator that saved the tensor] in scope_state.h): a block of the host pool (pinned
//   on CUDA; it grows in slabs, capped by ACTMEM_HOST_BUDGET) and a device-to-host copy queued
//   after the work queued so far on the tensor's current stream. The device tensor is held until
//   that copy has finished and released at a later call of the store, never before: its block
//   goes back to the allocator only when nothing reads it any more, and nothing waits for it on
//   the host.
// - take (at unpack): backward unpacks in about the reverse of pack order. The item's copy back is
//   queued now unless a prefetch queued it; the current stream is ordered after it (on CUDA an
//   event wait, on the thread engine a host wait: the stall). Then the items sent out before it are
//   fetched ahead, the most recent first, while the device bytes fetched ahead and not yet taken
//   stay within the prefetch window: each gets a device block and a host-to-device copy queued
//   after the current stream's work so far.
// - An item that dies with copies in flight (its saved variable freed before the copy out has
//   finished, a graph dropped without backward) leaves its device blocks and its host block with
//   the store until those copies have finished, as while it lived: no copy writes or reads a block
//   given to something else or released to its backend, and the host does not wait.
// Counted: bytes and copies each way, copies queued ahead, copies that had finished when needed
// (hidden), the copy time and how much of it compute waited for, offloads refused for lack of
// room.
//
// Note [Offloaded tensors come back laid out as they went]
// A tensor comes back with its sizes, dtype and strides (not its storage offset: it has a storage
// of its own). Kernels read them: a matrix product picks its path, and its rounding, by its
// operands' layout, and code torch.compile generated for the forward's layout asserts it
// (inductor's assert_size_stride: a saved q, k or v of attention is a permuted slice of one
// projection). A dense tensor's bytes go as they are, and so do those of a tensor whose elements
// share memory (an expanded one): the span from its first element to its last, laid out with its
// strides again on the way back. A tensor with gaps between its elements (a slice) goes out as a
// dense copy in the order of its strides. It comes back so to LibTorch's own derivative formulas,
// which compute from values (every exactness test passed with that layout), and otherwise through
// a copy on the device into a tensor of its own strides, its span, gaps included, allocated again
// as its original storage held them: for a custom Function's backward and code torch.compile
// generated (a downstream run found the dense layout failing inductor's backward), and for a
// segment's rerun. Always the latter would cost memory: slices that shared one storage come back
// each in a span of its own. A GPT-2-style attention's q, k and v, split from one projection, each
// span about 3 times its bytes (measured on 4 such eager blocks under offload: a peak of 38.6 MiB
// against 26.6 with the dense layout; keep 62.8).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "allocator/caching_allocator.h"
#include "copy/copy_engine.h"

namespace actmem {

// What the store's copies did since it began. All counts are cumulative.
struct TransferStats {
  std::int64_t bytes_to_host = 0, bytes_to_device = 0;
  std::int64_t copies_to_host = 0, copies_to_device = 0;
  std::int64_t prefetched = 0;  // copies back queued ahead of the unpack that needed them
  std::int64_t hidden = 0;      // copies back that had finished by the time they were needed
  std::int64_t refused = 0;     // offloads refused: the pool could not grow within its cap
  // The copy engine's time (copy/copy_engine.h), both ways, over the copies known to have
  // finished: how long they ran, and how long work waited for them (the host on CPU, the stream
  // on CUDA).
  std::int64_t copy_ns = 0;
  std::int64_t exposed_ns = 0;

  // The share of the copy time that compute hid: 1 when no copy took time.
  double hidden_fraction() const {
    if (copy_ns <= 0) return 1.0;
    return std::clamp(1.0 - static_cast<double>(exposed_ns) / static_cast<double>(copy_ns), 0.0,
                      1.0);
  }
};

struct HostStoreOptions {
  std::optional<std::size_t> capacity;  // cap on the pool's bytes (0: no room)
  // Device bytes fetched ahead and not yet taken. When empty, the store for the managed device
  // takes none on the CPU (a copy there is a memcpy that competes with compute for the same cores,
  // and every byte fetched early is peak memory) and 256 MiB on CUDA, where the copies overlap
  // compute; a store over an engine of the caller's takes none.
  std::optional<std::size_t> prefetch_window;
  static constexpr std::size_t kCudaPrefetchWindow = std::size_t{256} << 20;
};

class HostStore {
 public:
  // The store for the tensors of `device`, a device of the kind actmem manages: on CUDA the pinned
  // pool and that device's CUDA copy engine, else plain host memory and the inline engine.
  HostStore(HostStoreOptions options, c10::Device device);
  // Any engine and pool backend (tests drive the pipeline through engines of their own).
  HostStore(HostStoreOptions options, std::unique_ptr<copy::CopyEngine> engine,
            std::unique_ptr<alloc::Backend> pool_backend);
  ~HostStore();
  HostStore(const HostStore&) = delete;
  HostStore& operator=(const HostStore&) = delete;

  class Item;  // one tensor sent out; shared by its owner and the store's queues

  // The device whose tensors the store sends out (the CPU for engines of the caller's).
  c10::Device device() const;

  // Whether the store can send `tensor` out: a tensor of the device its copy engine serves (the
  // one it was made for, or the CPU for the inline engine and engines of the caller's), whose bytes, copied, come back as the same tensor: a strided tensor with
  // storage, of plain values (no conjugate or negative bit, not quantized, not nested, not a zero
  // tensor, not a Python subclass), whose elements need no more bytes than its storage has (a
  // much-expanded tensor does). Any other is kept where it is: the bytes alone would come back as
  // another tensor (a conjugate view as its base), cannot be had (a sparse tensor's), or would
  // free less than they count.
  // A tensor of another device is kept where it is: the engine would order its copy after
  // another device's stream, or read device memory as host memory.
  bool can_hold(const at::Tensor& tensor) const;

  // Sends `tensor` out (see the Note); nullptr when the pool cannot grow or can_hold() is false
  // (nothing is queued, the caller keeps the tensor). `now`: waits for the copy and lets go of the
  // tensor before returning (the pressure handler, which needs the memory back at once).
  std::shared_ptr<Item> offload(const at::Tensor& tensor, bool now = false);

  // The item's tensor on its device again, ordered before the work queued next on the current
  // stream; fetches ahead the items sent out before it (see the Note). Same sizes and dtype; the
  // same strides with `exact_layout`, else, for a tensor that had gaps, dense strides in the same
  // order (Note [Offloaded tensors come back laid out as they went]).
  // An item can be taken again (retain_graph): a new copy each time.
  at::Tensor take(const std::shared_ptr<Item>& item, bool exact_layout = true);

  // A copy of the item's tensor on its device, outside the prefetch order (a segment's rerun
  // reading an input through it); waits for it.
  at::Tensor copy_back(const Item& item);

  // For a device allocator short of memory: lets go of the device tensors whose copy out has
  // finished, then waits for the copies out still running, oldest first, and lets go of theirs,
  // until the tensors nothing else holds add up to `bytes`. Returns their bytes. (Each device
  // tensor sent out is held until its copy has finished, and let go of at a later call of the
  // store: under a budget, copies slower than the forward would otherwise hold the memory.)
  std::size_t release_sources(std::size_t bytes);

  TransferStats stats() const;
  alloc::CachingAllocator& pool();
  copy::CopyEngine& engine();

 private:
  class Core;  // what items and host blocks share, so that they may outlive the store
  std::shared_ptr<Core> core_;
};

}  // namespace actmem
