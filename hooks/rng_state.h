// The state of random number generators, captured and put back byte for byte: what a segment's
// rerun needs to draw the random numbers its forward drew. LibTorch's default CPU generator always;
// the current CUDA device's (its seed and Philox offset) too where actmem manages CUDA; and any
// generator the program gave an operator itself (rng_use.h finds those).
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace actmem {

// A generator and its state, as bytes (RngState compares states byte for byte).
using GeneratorState = std::pair<at::Generator, std::vector<std::uint8_t>>;

// `generator`'s state now, and `generator` at `state` again.
std::vector<std::uint8_t> state_of(at::Generator generator);
void set_state(at::Generator generator, const std::vector<std::uint8_t>& state);

class RngState {
 public:
  // The default generators' states now, and those of `others`.
  static RngState capture(const std::vector<at::Generator>& others = {});
  // The CUDA device whose default generator capture() takes now: the current one where actmem
  // manages CUDA; none where it manages the CPU.
  static std::optional<int> cuda_device_captured_now();
  // The seeds of the default generators capture() takes now (Generator::current_seed()): a draw,
  // on any thread, leaves a seed as it is; setting the state (torch.manual_seed) changes it.
  static std::vector<std::uint64_t> default_seeds();
  // Adds a generator of the program's own at a state it had (its state when the forward first gave
  // it to an operator): restored with the rest.
  void add(GeneratorState generator) { others_.push_back(std::move(generator)); }
  // The program's own generators, in the order added.
  std::vector<at::Generator> others() const;
  // Makes them all have their captured states again (the CUDA one on the device it came from).
  void restore() const;

  bool operator==(const RngState& other) const;
  bool operator!=(const RngState& other) const { return !(*this == other); }

 private:
  std::vector<std::uint8_t> cpu_;
  std::optional<int> cuda_device_;  // set when the CUDA generator's state was captured
  std::vector<std::uint8_t> cuda_;
  std::vector<GeneratorState> others_;
};

}  // namespace actmem
