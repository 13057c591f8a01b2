#include "hooks/rng_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <mutex>

namespace actmem {

RngState RngState::capture() {
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  const at::Tensor state = generator.get_state();
  const auto* bytes = state.data_ptr<std::uint8_t>();
  RngState captured;
  captured.cpu_.assign(bytes, bytes + state.numel());
  return captured;
}

void RngState::restore() const {
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  // set_state copies out of the tensor; from_blob over our bytes is only read.
  std::vector<std::uint8_t> bytes = cpu_;
  generator.set_state(
      at::from_blob(bytes.data(), {static_cast<std::int64_t>(bytes.size())}, at::kByte));
}

}  // namespace actmem
