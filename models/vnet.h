// VNet (Milletari et al., "V-Net", 2016): a 3D encoder-decoder for volumetric segmentation with
// residual stages of 5x5x5 convolutions, 2x2x2 strided down-convolutions, transposed
// up-convolutions and a skip connection from each down stage to its up stage; two classes per
// voxel. Each down and up stage is a segment. Two departures from the paper, both as in the
// widely used PyTorch port: BatchNorm after every convolution, and cross entropy instead of the
// Dice loss.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "models/model.h"

namespace actmem::models {

struct VNetConfig {
  std::int64_t channels = 16;                          // the first stage; each down stage doubles
  std::array<std::int64_t, 3> volume = {128, 128, 64};  // depth, height, width: multiples of 16
  std::int64_t kernel = 5;
  std::int64_t classes = 2;
};

// Throws std::invalid_argument when a side of the volume is not a multiple of 16.
std::shared_ptr<Model> make_vnet(const VNetConfig& config);

}  // namespace actmem::models
