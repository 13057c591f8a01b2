#include "bench/compare/parked_storages.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <new>
#include <unordered_set>

namespace actmem::bench {
namespace {

// `bytes` bytes at `data` on `device`, as a tensor that owns nothing.
at::Tensor bytes_at(void* data, std::size_t bytes, c10::Device device) {
  return at::from_blob(data, {static_cast<std::int64_t>(bytes)},
                       at::TensorOptions().dtype(at::kByte).device(device));
}

void free_host(void* ptr) { std::free(ptr); }

}  // namespace

void ParkedStorages::park(const std::vector<at::Tensor>& tensors) {
  std::unordered_set<const c10::StorageImpl*> seen;
  for (const Entry& entry : entries_) seen.insert(entry.storage.get());
  for (const at::Tensor& tensor : tensors) {
    if (!tensor.defined() || !tensor.has_storage()) continue;
    c10::StorageImpl* storage = tensor.storage().unsafeGetStorageImpl();
    if (!seen.insert(storage).second) continue;
    const std::size_t bytes = storage->nbytes();
    void* host = std::malloc(bytes == 0 ? 1 : bytes);
    if (host == nullptr) throw std::bad_alloc();
    c10::DataPtr host_ptr(host, host, &free_host, c10::Device(c10::DeviceType::CPU));
    const c10::Device device = storage->device();
    if (bytes > 0) {
      at::NoGradGuard no_grad;
      bytes_at(host, bytes, c10::Device(c10::DeviceType::CPU))
          .copy_(bytes_at(storage->mutable_data(), bytes, device));
    }
    // The device memory goes back to its allocator when the returned DataPtr does.
    storage->set_data_ptr(std::move(host_ptr));
    entries_.push_back({c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(storage), device});
  }
}

void ParkedStorages::unpark() {
  at::NoGradGuard no_grad;
  // Every storage's memory first: a budget that refuses one leaves them all parked, and what was
  // found for the others goes back with `fresh`.
  std::vector<c10::DataPtr> fresh;
  fresh.reserve(entries_.size());
  for (const Entry& entry : entries_) {
    c10::Allocator* allocator = entry.storage->allocator() != nullptr
                                    ? entry.storage->allocator()
                                    : c10::GetAllocator(entry.device.type());
    fresh.push_back(allocator->allocate(entry.storage->nbytes()));
  }
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    Entry& entry = entries_[i];
    const std::size_t bytes = entry.storage->nbytes();
    if (bytes > 0) {
      bytes_at(fresh[i].get(), bytes, entry.device)
          .copy_(bytes_at(entry.storage->mutable_data(), bytes,
                          c10::Device(c10::DeviceType::CPU)));
    }
    entry.storage->set_data_ptr(std::move(fresh[i]));  // the host copy is freed with the old one
  }
  entries_.clear();
}

}  // namespace actmem::bench
