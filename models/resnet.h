// ResNet in two shapes, one segment per residual block:
// - the pre-activation bottleneck ResNet for 32x32 images (He et al., "Identity Mappings in Deep
//   Residual Networks", 2016): depth 9n+2, stages of n blocks at widths w, 2w, 4w (output 4x);
//   depth 164 and 1001 are the published configurations (w = 16, 10 classes);
// - the ImageNet ResNet-50 (He et al., 2015; torchvision's layout): post-activation bottlenecks,
//   stages of 3-4-6-3 blocks, 224x224 input, 1000 classes.
#pragma once

#include <cstdint>
#include <memory>

#include "models/model.h"

namespace actmem::models {

struct PreactResNetConfig {
  int depth = 164;  // 9n + 2
  std::int64_t width = 16;
  std::int64_t classes = 10;
  std::int64_t image_size = 32;
};

// Throws std::invalid_argument when depth is not 9n+2 with n >= 1.
std::shared_ptr<Model> make_preact_resnet(const PreactResNetConfig& config);
std::shared_ptr<Model> make_resnet50();

}  // namespace actmem::models
