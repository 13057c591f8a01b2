#include "hooks/rng_state.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <mutex>

#include "hooks/install.h"

namespace actmem {

std::vector<std::uint8_t> state_of(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  const at::Tensor state = generator.get_state();
  const auto* bytes = state.data_ptr<std::uint8_t>();
  return {bytes, bytes + state.numel()};
}

void set_state(at::Generator generator, const std::vector<std::uint8_t>& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  // set_state copies out of the tensor; from_blob over a copy of our bytes is only read.
  std::vector<std::uint8_t> bytes = state;
  generator.set_state(
      at::from_blob(bytes.data(), {static_cast<std::int64_t>(bytes.size())}, at::kByte));
}

namespace {

const at::Generator& cuda_generator(int device) {
  return at::globalContext().defaultGenerator(c10::Device(c10::DeviceType::CUDA, device));
}

}  // namespace

std::optional<int> RngState::cuda_device_captured_now() {
  // managed_device(), not installed(): a Python process installs the allocator and no engine, and
  // its CUDA dropout must rerun from the CUDA generator's state too.
  if (managed_device() != c10::DeviceType::CUDA) return std::nullopt;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice().index();
}

std::vector<std::uint64_t> RngState::default_seeds() {
  std::vector<std::uint64_t> seeds = {
      at::globalContext().defaultGenerator(c10::DeviceType::CPU).current_seed()};
  if (const std::optional<int> device = cuda_device_captured_now()) {
    seeds.push_back(cuda_generator(*device).current_seed());
  }
  return seeds;
}

RngState RngState::capture(const std::vector<at::Generator>& others) {
  RngState captured;
  captured.cpu_ = state_of(at::globalContext().defaultGenerator(c10::DeviceType::CPU));
  if (const std::optional<int> device = cuda_device_captured_now()) {
    captured.cuda_device_ = device;
    captured.cuda_ = state_of(cuda_generator(*device));
  }
  for (const at::Generator& generator : others) captured.add({generator, state_of(generator)});
  return captured;
}

std::vector<at::Generator> RngState::others() const {
  std::vector<at::Generator> generators;
  for (const auto& [generator, state] : others_) generators.push_back(generator);
  return generators;
}

void RngState::restore() const {
  set_state(at::globalContext().defaultGenerator(c10::DeviceType::CPU), cpu_);
  if (cuda_device_) set_state(cuda_generator(*cuda_device_), cuda_);
  for (const auto& [generator, state] : others_) set_state(generator, state);
}

bool RngState::operator==(const RngState& other) const {
  if (cpu_ != other.cpu_ || cuda_device_ != other.cuda_device_ || cuda_ != other.cuda_ ||
      others_.size() != other.others_.size()) {
    return false;
  }
  for (std::size_t i = 0; i < others_.size(); ++i) {
    const GeneratorState& mine = others_[i];
    const GeneratorState& theirs = other.others_[i];
    if (mine.first != theirs.first || mine.second != theirs.second) {
      return false;
    }
  }
  return true;
}

}  // namespace actmem
