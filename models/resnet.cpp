#include "models/resnet.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "models/image_classifier.h"
#include "models/layers.h"

namespace actmem::models {
namespace {

namespace nn = torch::nn;

constexpr std::int64_t kExpansion = 4;  // a bottleneck's output is 4x its width

// BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1, plus the input: the pre-activation
// bottleneck. When the shape changes, the shortcut is a strided 1x1 convolution of the
// pre-activated input.
struct PreactBottleneckImpl : nn::Module {
  PreactBottleneckImpl(std::int64_t in, std::int64_t width, std::int64_t stride)
      : bn1(register_module("bn1", nn::BatchNorm2d(in))),
        conv1(register_module("conv1", conv2d(in, width, 1))),
        bn2(register_module("bn2", nn::BatchNorm2d(width))),
        conv2(register_module("conv2", conv2d(width, width, 3, stride))),
        bn3(register_module("bn3", nn::BatchNorm2d(width))),
        conv3(register_module("conv3", conv2d(width, width * kExpansion, 1))) {
    if (stride != 1 || in != width * kExpansion) {
      shortcut = register_module("shortcut", conv2d(in, width * kExpansion, 1, stride));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor pre = torch::relu(bn1(x));
    torch::Tensor y = conv1(pre);
    y = conv2(torch::relu(bn2(y)));
    y = conv3(torch::relu(bn3(y)));
    return y + (shortcut ? shortcut(pre) : x);
  }
  nn::BatchNorm2d bn1;
  nn::Conv2d conv1;
  nn::BatchNorm2d bn2;
  nn::Conv2d conv2;
  nn::BatchNorm2d bn3;
  nn::Conv2d conv3, shortcut{nullptr};
};
TORCH_MODULE(PreactBottleneck);

// conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1-BN, plus the shortcut, then ReLU.
struct BottleneckImpl : nn::Module {
  BottleneckImpl(std::int64_t in, std::int64_t width, std::int64_t stride)
      : conv1(register_module("conv1", conv2d(in, width, 1))),
        bn1(register_module("bn1", nn::BatchNorm2d(width))),
        conv2(register_module("conv2", conv2d(width, width, 3, stride))),
        bn2(register_module("bn2", nn::BatchNorm2d(width))),
        conv3(register_module("conv3", conv2d(width, width * kExpansion, 1))),
        bn3(register_module("bn3", nn::BatchNorm2d(width * kExpansion))) {
    if (stride != 1 || in != width * kExpansion) {
      downsample = register_module(
          "downsample", nn::Sequential(conv2d(in, width * kExpansion, 1, stride),
                                       nn::BatchNorm2d(width * kExpansion)));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = torch::relu(bn1(conv1(x)));
    y = torch::relu(bn2(conv2(y)));
    y = bn3(conv3(y));
    return torch::relu(y + (downsample ? downsample->forward(x) : x));
  }
  nn::Conv2d conv1;
  nn::BatchNorm2d bn1;
  nn::Conv2d conv2;
  nn::BatchNorm2d bn2;
  nn::Conv2d conv3;
  nn::BatchNorm2d bn3;
  nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

// Stages of bottleneck blocks: stage s has blocks_per_stage[s] blocks of width widths[s], the
// first one strided by strides[s]. Returns the blocks and the output channel count.
template <typename BlockType>
std::vector<SegmentedClassifier::Block> bottleneck_stages(std::int64_t in,
                                                          const std::vector<int>& blocks_per_stage,
                                                          const std::vector<std::int64_t>& widths,
                                                          const std::vector<std::int64_t>& strides,
                                                          std::int64_t* out_channels) {
  std::vector<SegmentedClassifier::Block> blocks;
  for (std::size_t s = 0; s < blocks_per_stage.size(); ++s) {
    for (int b = 0; b < blocks_per_stage[s]; ++b) {
      const std::string name = "stage" + std::to_string(s + 1) + ".block" + std::to_string(b);
      blocks.push_back({name, nn::AnyModule(BlockType(in, widths[s], b == 0 ? strides[s] : 1))});
      in = widths[s] * kExpansion;
    }
  }
  *out_channels = in;
  return blocks;
}

}  // namespace

std::shared_ptr<Model> make_preact_resnet(const PreactResNetConfig& config) {
  if (config.depth < 11 || (config.depth - 2) % 9 != 0) {
    throw std::invalid_argument("pre-activation ResNet depth must be 9n+2 with n >= 1, got " +
                                std::to_string(config.depth));
  }
  const int n = (config.depth - 2) / 9;
  const std::int64_t w = config.width;
  std::int64_t channels = 0;
  auto blocks = bottleneck_stages<PreactBottleneck>(w, {n, n, n}, {w, 2 * w, 4 * w}, {1, 2, 2},
                                                    &channels);
  nn::Sequential stem(conv2d(3, w, 3));
  nn::Sequential head(nn::BatchNorm2d(channels), nn::ReLU(),
                      nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(channels, config.classes));
  return std::make_shared<SegmentedClassifier>(ImageShape{3, config.image_size, config.classes},
                                               stem, std::move(blocks), head);
}

std::shared_ptr<Model> make_resnet50() {
  std::int64_t channels = 0;
  auto blocks = bottleneck_stages<Bottleneck>(64, {3, 4, 6, 3}, {64, 128, 256, 512}, {1, 2, 2, 2},
                                              &channels);
  nn::Sequential stem(conv2d(3, 64, 7, 2), nn::BatchNorm2d(64), nn::ReLU(),
                      nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
  nn::Sequential head(nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(channels, 1000));
  return std::make_shared<SegmentedClassifier>(ImageShape{3, 224, 1000}, stem, std::move(blocks),
                                               head);
}

}  // namespace actmem::models
