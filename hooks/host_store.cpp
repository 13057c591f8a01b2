#include "hooks/host_store.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <vector>

#include "allocator/errors.h"
#include "copy/factory.h"

namespace actmem {
namespace {

alloc::AllocatorOptions pool_options(std::optional<std::size_t> capacity) {
  alloc::AllocatorOptions options;
  options.budget_bytes = capacity;
  options.pressure_rounds = 0;
  return options;
}

// The stream work on `device` is queued on now: what copies to and from it are ordered after.
alloc::Stream current_stream(c10::Device device) {
  if (device.is_cpu()) return alloc::kDefaultStream;
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
}

// The bytes a tensor's elements span in its storage, from its first: what a raw copy of it moves.
// Its elements' bytes when it is dense; more when it has gaps, fewer when elements share memory.
std::int64_t byte_size(const at::Tensor& tensor) {
  return static_cast<std::int64_t>(at::detail::computeStorageNbytes(
      tensor.sizes(), tensor.strides(), static_cast<std::size_t>(tensor.element_size())));
}

}  // namespace

class HostStore::Item {
 public:
  Item(std::shared_ptr<Core> owner, std::uint64_t order)
      : core(std::move(owner)), sequence(order) {}
  ~Item();
  Item(const Item&) = delete;
  Item& operator=(const Item&) = delete;

  std::shared_ptr<Core> core;
  const std::uint64_t sequence;  // the order it was sent out in
  at::Tensor host;               // its bytes in the pool, laid out as the tensor, or dense
  // The tensor's strides when they left gaps between its elements, and its bytes went out dense;
  // empty when `host` has the tensor's layout (Note [Offloaded tensors come back laid out as
  // they went]).
  std::vector<std::int64_t> gapped_strides;
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  copy::CopyEngine::Ticket out = 0;  // the copy to the host
  at::Tensor source;                 // the device tensor, until that copy has finished
  at::Tensor fetched;                // a copy back queued ahead, until taken
  copy::CopyEngine::Ticket in = 0;   // that copy
  bool fetching = false;             // chosen for a prefetch whose copy is being queued
};

class HostStore::Core {
 public:
  Core(HostStoreOptions store_options, std::unique_ptr<copy::CopyEngine> copy_engine,
       std::unique_ptr<alloc::Backend> pool_backend, c10::Device engine_device)
      : device(engine_device),
        window(store_options.prefetch_window.value_or(0)),
        engine(std::move(copy_engine)),
        pool(std::move(pool_backend), pool_options(store_options.capacity)) {}

  // Holds a tensor of an item that went, until copy `ticket`, which reads or writes it, has
  // finished. May run under `mutex` (an item can die inside reap()). Once the store is gone,
  // nothing would reap it (and a host block's deleter holds the core: a cycle), so it waits.
  void retire(copy::CopyEngine::Ticket ticket, at::Tensor tensor) {
    if (ticket == 0 || finished_or_failed(ticket)) return;
    {
      std::lock_guard<std::mutex> lock(retired_mutex);
      if (!store_gone) {
        retired.push_back({ticket, std::move(tensor)});
        return;
      }
    }
    wait_or_fail(ticket);
  }

  // For the destructors (an item's, the store's), which must not throw: a copy whose state the
  // engine cannot tell (a device failed for good, a CUDA runtime unloading at exit) runs no more,
  // so it counts as finished.
  bool finished_or_failed(copy::CopyEngine::Ticket ticket) noexcept {
    try {
      return engine->finished(ticket);
    } catch (const std::exception&) {
      return true;
    }
  }
  void wait_or_fail(copy::CopyEngine::Ticket ticket) noexcept {
    try {
      engine->wait(ticket);
    } catch (const std::exception&) {
      // As above: nothing left to wait for.
    }
  }

  // The store is going: waits for the copies of what is retired, then lets it go.
  void drain() {
    std::vector<Retired> draining;
    {
      std::lock_guard<std::mutex> lock(retired_mutex);
      store_gone = true;
      draining.swap(retired);
    }
    for (const Retired& r : draining) wait_or_fail(r.ticket);
  }

  // The bytes a source frees when the store lets go of it: none if something else holds it.
  static std::size_t sole_bytes(const at::Tensor& source) {
    return source.defined() && source.storage().use_count() == 1 ? source.storage().nbytes() : 0;
  }

  // Lets go of the sources whose copy has finished, and forgets items that are gone. Returns the
  // bytes of the sources let go of that nothing else held.
  std::size_t reap() {  // mutex held
    std::size_t released = 0;
    std::vector<Retired> finished;
    {
      std::lock_guard<std::mutex> lock(retired_mutex);
      const auto still =
          std::stable_partition(retired.begin(), retired.end(),
                                [this](const Retired& r) { return !engine->finished(r.ticket); });
      std::move(still, retired.end(), std::back_inserter(finished));
      retired.erase(still, retired.end());
    }  // `finished` goes back to the allocator after retired_mutex
    // Copies finish in the order they were queued (CopyEngine::copy), and `sending` is in that
    // order: its finished ones are at the front. (A walk of all of them on each call made a step
    // that saves n tensors cost n^2.)
    while (!sending.empty()) {
      const std::shared_ptr<Item> item = sending.front().lock();
      if (item && !engine->finished(item->out)) break;
      if (item) {
        released += sole_bytes(item->source);
        item->source = at::Tensor();
      }
      sending.pop_front();
    }
    // Items gone (their saved variables freed) are forgotten once the map has doubled since the
    // last walk: amortised, a constant per call.
    if (waiting.size() >= 2 * waiting_after_walk + 64) {
      for (auto it = waiting.begin(); it != waiting.end();) {
        it = it->second.expired() ? waiting.erase(it) : std::next(it);
      }
      waiting_after_walk = waiting.size();
    }
    return released;
  }

  // Device bytes fetched ahead and not yet taken.
  std::int64_t ahead_bytes() {  // mutex held
    std::int64_t bytes = 0;
    ahead.erase(std::remove_if(ahead.begin(), ahead.end(),
                               [&](const std::weak_ptr<Item>& weak) {
                                 const std::shared_ptr<Item> item = weak.lock();
                                 if (!item || (!item->fetched.defined() && !item->fetching)) {
                                   return true;
                                 }
                                 bytes += byte_size(item->host);
                                 return false;
                               }),
                ahead.end());
    return bytes;
  }

  // A device tensor for the item's bytes, laid out as its host copy. Allocates: called without
  // the mutex (an allocation may ask the pressure handler, which may offload).
  static at::Tensor device_tensor_for(const Item& item) {
    return at::empty_strided(item.host.sizes(), item.host.strides(),
                             item.host.options().device(item.device));
  }

  // The item's tensor as it went out, from `copied`, its bytes back on the device: `copied`
  // itself, or for a tensor that had gaps, a copy of it with the tensor's strides, queued on the
  // current stream (after the copy in: order_after first). Allocates, as device_tensor_for does.
  static at::Tensor as_it_went(const Item& item, at::Tensor copied) {
    if (item.gapped_strides.empty()) return copied;
    at::NoGradGuard no_grad;
    at::Tensor laid_out = at::empty_strided(copied.sizes(), item.gapped_strides, copied.options());
    laid_out.copy_(copied);
    return laid_out;
  }

  // Orders `stream` after copy back `ticket`. If that fails, waits for the copy on the host
  // before the error goes on: the caller frees the copy's destination on the way out, and the copy
  // must not write into a block handed out again.
  void order_after(copy::CopyEngine::Ticket ticket, alloc::Stream stream) {
    if (ticket == 0) return;
    try {
      engine->order_after(ticket, stream);
    } catch (...) {
      wait_or_fail(ticket);
      throw;
    }
  }

  // Queues the copy back into `destination`. (mutex held)
  copy::CopyEngine::Ticket queue_in(const Item& item, const at::Tensor& destination) {
    const std::int64_t bytes = byte_size(item.host);
    ++stats.copies_to_device;
    stats.bytes_to_device += bytes;
    if (bytes == 0) return 0;
    return engine->copy(destination.data_ptr(), item.host.data_ptr(),
                        static_cast<std::size_t>(bytes), current_stream(item.device));
  }

  ~Core() {
    for (const Retired& r : retired) wait_or_fail(r.ticket);
  }

  struct Retired {
    copy::CopyEngine::Ticket ticket;
    at::Tensor tensor;
  };

  const c10::Device device;  // whose tensors the engine copies
  std::mutex mutex;          // everything below but the engine and the pool, which lock themselves
  const std::size_t window;  // the prefetch window in force
  const std::unique_ptr<copy::CopyEngine> engine;
  alloc::CachingAllocator pool;
  TransferStats stats;
  std::uint64_t next_sequence = 0;
  std::deque<std::weak_ptr<Item>> sending;               // holding a source: copy in flight
  std::map<std::uint64_t, std::weak_ptr<Item>> waiting;  // sent out, not taken yet
  std::size_t waiting_after_walk = 0;                    // its size after reap() last walked it
  std::vector<std::weak_ptr<Item>> ahead;                // fetched ahead, not taken yet
  std::mutex retired_mutex;      // the two below only; taken after `mutex` when both are
  std::vector<Retired> retired;  // the tensors of items gone, with copies in flight
  bool store_gone = false;       // the HostStore is destroyed: nothing reaps any more
};

HostStore::Item::~Item() {
  // A copy still reading the source, or writing a block fetched ahead: the store keeps that block
  // until it has finished (Note [Offload pipeline]). So with the host block, which the copies out
  // and back write and read: back in the pool, it could be released to the backend while they run.
  if (source.defined()) core->retire(out, std::move(source));
  if (fetched.defined()) core->retire(in, std::move(fetched));
  if (host.defined()) core->retire(std::max(out, in), std::move(host));
}

HostStore::HostStore(HostStoreOptions options, c10::Device device) {
  // A store without room copies nothing: it needs no CUDA stream and no pinned slab.
  const bool cuda = device.is_cuda() && (!options.capacity || *options.capacity > 0);
  if (!options.prefetch_window) {
    options.prefetch_window = cuda ? HostStoreOptions::kCudaPrefetchWindow : 0;
  }
  core_ = std::make_shared<Core>(options, copy::make_copy_engine(cuda, device.index()),
                                 copy::make_host_backend(cuda),
                                 cuda ? device : c10::Device(c10::DeviceType::CPU));
}

HostStore::HostStore(HostStoreOptions options, std::unique_ptr<copy::CopyEngine> engine,
                     std::unique_ptr<alloc::Backend> pool_backend)
    : core_(std::make_shared<Core>(options, std::move(engine), std::move(pool_backend),
                                   c10::Device(c10::DeviceType::CPU))) {}

HostStore::~HostStore() { core_->drain(); }

c10::Device HostStore::device() const { return core_->device; }

bool HostStore::can_hold(const at::Tensor& tensor) const {
  if (tensor.device() != core_->device) return false;
  if (tensor.layout() != at::kStrided || !tensor.has_storage() || tensor.is_conj() ||
      tensor.is_neg() || tensor.is_quantized() || tensor.is_nested() || tensor._is_zerotensor() ||
      tensor.unsafeGetTensorImpl()->is_python_dispatch()) {
    return false;
  }
  // A tensor whose elements need more bytes than its storage has (expanded): sent out, it would
  // free less than it counts.
  return static_cast<std::size_t>(tensor.numel() * tensor.element_size()) <=
         tensor.storage().nbytes();
}

std::shared_ptr<HostStore::Item> HostStore::offload(const at::Tensor& tensor, bool now) {
  if (!can_hold(tensor)) return nullptr;
  at::NoGradGuard no_grad;
  at::Tensor source = tensor.detach();
  // A tensor with gaps goes out dense (Note [Offloaded tensors come back laid out as they
  // went]); any other as the span of its elements (elements sharing memory: an expanded one).
  std::vector<std::int64_t> gapped_strides;
  const std::int64_t elements_bytes = static_cast<std::int64_t>(source.numel()) *
                                      static_cast<std::int64_t>(source.element_size());
  if (byte_size(source) > elements_bytes &&
      at::has_internal_overlap(source) != at::MemOverlap::Yes) {
    gapped_strides = source.strides().vec();
    source = source.clone(at::MemoryFormat::Preserve);
  }
  const std::int64_t bytes = byte_size(source);
  std::shared_ptr<Item> item;
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    core_->reap();
    void* block = nullptr;
    if (bytes > 0) {
      try {
        block = core_->pool.allocate(static_cast<std::size_t>(bytes));
      } catch (const alloc::OutOfMemoryError&) {
        ++core_->stats.refused;
        return nullptr;
      }
    }
    item = std::make_shared<Item>(core_, core_->next_sequence++);
    item->device = source.device();
    item->gapped_strides = std::move(gapped_strides);
    const std::shared_ptr<Core> core = core_;
    item->host = at::from_blob(
        block, source.sizes(), source.strides(),
        [core](void* ptr) {
          if (ptr != nullptr) core->pool.deallocate(ptr);
        },
        source.options().device(c10::DeviceType::CPU).requires_grad(false));
    if (bytes > 0) {
      item->out = core_->engine->copy(block, source.data_ptr(), static_cast<std::size_t>(bytes),
                                      current_stream(item->device));
      if (!core_->engine->finished(item->out)) {  // else (the inline engine) nothing to hold
        item->source = source;
        core_->sending.push_back(item);
      }
    }
    core_->waiting.emplace(item->sequence, item);
    ++core_->stats.copies_to_host;
    core_->stats.bytes_to_host += bytes;
  }
  if (now && item->out != 0) {
    core_->engine->wait(item->out);
    std::lock_guard<std::mutex> lock(core_->mutex);
    item->source = at::Tensor();
  }
  return item;
}

at::Tensor HostStore::take(const std::shared_ptr<Item>& item, bool exact_layout) {
  at::Tensor destination;
  copy::CopyEngine::Ticket ticket = 0;
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    core_->reap();
    core_->waiting.erase(item->sequence);
    if (item->fetched.defined()) {  // a prefetch queued it
      destination = std::move(item->fetched);
      item->fetched = at::Tensor();
      ticket = item->in;
    }
  }
  if (!destination.defined()) {
    destination = Core::device_tensor_for(*item);
    std::lock_guard<std::mutex> lock(core_->mutex);
    ticket = item->in = core_->queue_in(*item, destination);
  }
  const bool hidden = ticket == 0 || core_->engine->finished(ticket);
  core_->order_after(ticket, current_stream(item->device));
  if (exact_layout) destination = Core::as_it_went(*item, std::move(destination));
  std::vector<std::shared_ptr<Item>> chosen;
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    core_->stats.hidden += hidden;
    // The items sent out before this one, the most recent first, within the window.
    std::int64_t ahead = core_->ahead_bytes();
    for (auto it = core_->waiting.lower_bound(item->sequence); it != core_->waiting.begin();) {
      --it;
      const std::shared_ptr<Item> candidate = it->second.lock();
      if (!candidate || candidate->fetched.defined() || candidate->fetching) continue;
      const std::int64_t bytes = byte_size(candidate->host);
      if (ahead + bytes > static_cast<std::int64_t>(core_->window)) break;
      ahead += bytes;
      candidate->fetching = true;
      core_->ahead.push_back(candidate);
      chosen.push_back(candidate);
    }
  }
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const std::shared_ptr<Item>& candidate = chosen[i];
    at::Tensor ahead_copy;
    try {
      // Only into room there is: a prefetch that made room by sending kept tensors out, or that
      // failed the unpack, would cost more than it saves.
      const alloc::CachingAllocator::Speculative speculative;
      ahead_copy = Core::device_tensor_for(*candidate);
    } catch (const std::exception&) {
      std::lock_guard<std::mutex> lock(core_->mutex);
      for (std::size_t j = i; j < chosen.size(); ++j) chosen[j]->fetching = false;
      break;  // these come back when taken
    }
    std::lock_guard<std::mutex> lock(core_->mutex);
    candidate->in = core_->queue_in(*candidate, ahead_copy);
    candidate->fetched = std::move(ahead_copy);
    candidate->fetching = false;
    ++core_->stats.prefetched;
  }
  return destination;
}

at::Tensor HostStore::copy_back(const Item& item) {
  at::Tensor destination = Core::device_tensor_for(item);
  copy::CopyEngine::Ticket ticket;
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    ticket = core_->queue_in(item, destination);
  }
  core_->order_after(ticket, current_stream(item.device));
  return Core::as_it_went(item, std::move(destination));
}

std::size_t HostStore::release_sources(std::size_t bytes) {
  std::size_t released = 0;
  std::vector<std::shared_ptr<Item>> in_flight;  // oldest first, as sent
  {
    std::lock_guard<std::mutex> lock(core_->mutex);
    released = core_->reap();  // the finished ones
    for (const std::weak_ptr<Item>& weak : core_->sending) {
      if (std::shared_ptr<Item> item = weak.lock()) in_flight.push_back(std::move(item));
    }
  }
  for (const std::shared_ptr<Item>& item : in_flight) {
    if (released >= bytes) break;
    {
      std::lock_guard<std::mutex> lock(core_->mutex);
      if (Core::sole_bytes(item->source) == 0) continue;  // held elsewhere: waiting frees nothing
    }
    core_->engine->wait(item->out);  // without the mutex: other copies go on being queued
    std::lock_guard<std::mutex> lock(core_->mutex);
    released += core_->reap();  // it, and what finished before it
  }
  return released;
}

TransferStats HostStore::stats() const {
  const copy::CopyEngine::Time time = core_->engine->time();
  std::lock_guard<std::mutex> lock(core_->mutex);
  TransferStats stats = core_->stats;
  stats.copy_ns = time.copying_ns;
  stats.exposed_ns = time.exposed_ns;
  return stats;
}

alloc::CachingAllocator& HostStore::pool() { return core_->pool; }

copy::CopyEngine& HostStore::engine() { return *core_->engine; }

}  // namespace actmem
