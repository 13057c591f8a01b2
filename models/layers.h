// Building blocks the image models share.
#pragma once

#include <torch/nn/modules/conv.h>

#include <cstdint>

namespace actmem::models {

// A square `kernel` x `kernel` convolution without bias (a BatchNorm follows it), padded to keep
// the size at stride 1.
inline torch::nn::Conv2d conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel,
                                std::int64_t stride = 1) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

}  // namespace actmem::models
