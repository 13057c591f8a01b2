// DenseNet-BC (Huang et al., 2017) for 224x224 images, as in torchvision: an ImageNet stem, dense
// blocks whose layers see the concatenation of every earlier feature map, and compressing
// transitions between blocks. Each layer's concatenate -> BatchNorm -> ReLU -> 1x1 convolution is
// a segment: the concatenation is the term that grows with the square of the block's length, and
// the one a recompute removes (the memory-efficient DenseNet of Pleiss et al., 2017).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "models/model.h"

namespace actmem::models {

struct DenseNetConfig {
  std::vector<int> block_layers = {6, 12, 24, 16};  // DenseNet-121; {6, 12, 64, 48} is 264
  std::int64_t growth = 32;
  std::int64_t bottleneck_factor = 4;  // a layer's 1x1 convolution outputs factor x growth
  double compression = 0.5;            // a transition keeps this share of the channels
  std::int64_t stem_channels = 64;
  std::int64_t image_size = 224;
  std::int64_t classes = 1000;
};

std::shared_ptr<Model> make_densenet(const DenseNetConfig& config);

// DenseNet-264 (BC, k = 32): the `full` size, the largest of the seed's table.
inline DenseNetConfig densenet264() {
  DenseNetConfig config;
  config.block_layers = {6, 12, 64, 48};
  return config;
}

}  // namespace actmem::models
