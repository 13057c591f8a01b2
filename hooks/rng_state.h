// The state of LibTorch's default CPU generator, captured and put back byte for byte: what a
// segment's rerun needs to draw the random numbers its forward drew.
#pragma once

#include <cstdint>
#include <vector>

namespace actmem {

class RngState {
 public:
  // The default CPU generator's state now. (Kept as bytes: LibTorch 1.13's Generator::clone()
  // leaked its clone.)
  static RngState capture();
  // Makes it the default CPU generator's state again.
  void restore() const;

  bool operator==(const RngState& other) const { return cpu_ == other.cpu_; }
  bool operator!=(const RngState& other) const { return !(*this == other); }

 private:
  std::vector<std::uint8_t> cpu_;
};

}  // namespace actmem
