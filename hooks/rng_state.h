// The state of LibTorch's default generators, captured and put back byte for byte: what a
// segment's rerun needs to draw the random numbers its forward drew. The CPU generator always;
// the current CUDA device's (its seed and Philox offset) too where actmem manages CUDA.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace actmem {

class RngState {
 public:
  // The default generators' states now. (Kept as bytes: LibTorch 1.13's Generator::clone()
  // leaked its clone.)
  static RngState capture();
  // Makes them the default generators' states again (the CUDA one on the device it came from).
  void restore() const;

  bool operator==(const RngState& other) const {
    return cpu_ == other.cpu_ && cuda_device_ == other.cuda_device_ && cuda_ == other.cuda_;
  }
  bool operator!=(const RngState& other) const { return !(*this == other); }

 private:
  std::vector<std::uint8_t> cpu_;
  std::optional<int> cuda_device_;  // set when the CUDA generator's state was captured
  std::vector<std::uint8_t> cuda_;
};

}  // namespace actmem
