#include "models/densenet.h"

#include <torch/torch.h>

#include <string>

#include "hooks/segment.h"
#include "models/image_classifier.h"
#include "models/layers.h"

namespace actmem::models {
namespace {

namespace nn = torch::nn;

// One dense layer: a bottleneck (BN-ReLU-conv1x1 over the concatenated features, the segment)
// and the BN-ReLU-conv3x3 that produces `growth` new channels.
struct DenseLayerImpl : nn::Module {
  DenseLayerImpl(std::int64_t in, std::int64_t growth, std::int64_t factor)
      : bottleneck(register_module(
            "bottleneck",
            nn::Sequential(nn::BatchNorm2d(in), nn::ReLU(), conv2d(in, factor * growth, 1)))),
        expand(register_module("expand", nn::Sequential(nn::BatchNorm2d(factor * growth),
                                                        nn::ReLU(),
                                                        conv2d(factor * growth, growth, 3)))) {}
  nn::Sequential bottleneck, expand;
};
TORCH_MODULE(DenseLayer);

class DenseNet : public Model {
 public:
  explicit DenseNet(const DenseNetConfig& config)
      : shape_{3, config.image_size, config.classes} {
    std::int64_t channels = config.stem_channels;
    stem_ = register_module(
        "stem", nn::Sequential(conv2d(3, channels, 7, 2), nn::BatchNorm2d(channels), nn::ReLU(),
                               nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1))));
    for (std::size_t b = 0; b < config.block_layers.size(); ++b) {
      std::vector<DenseLayer> layers;
      for (int l = 0; l < config.block_layers[b]; ++l) {
        layers.push_back(register_module(
            "block" + std::to_string(b + 1) + "_layer" + std::to_string(l + 1),
            DenseLayer(channels, config.growth, config.bottleneck_factor)));
        channels += config.growth;
      }
      blocks_.push_back(std::move(layers));
      if (b + 1 < config.block_layers.size()) {
        const auto out = static_cast<std::int64_t>(static_cast<double>(channels) *
                                                   config.compression);
        transitions_.push_back(register_module(
            "transition" + std::to_string(b + 1),
            nn::Sequential(nn::BatchNorm2d(channels), nn::ReLU(), conv2d(channels, out, 1),
                           nn::AvgPool2d(nn::AvgPool2dOptions(2).stride(2)))));
        channels = out;
      }
    }
    head_ = register_module(
        "head", nn::Sequential(nn::BatchNorm2d(channels), nn::ReLU(), nn::AdaptiveAvgPool2d(1),
                               nn::Flatten(), nn::Linear(channels, config.classes)));
  }

  torch::Tensor forward(const torch::Tensor& input) override {
    torch::Tensor x = stem_->forward(input);
    for (std::size_t b = 0; b < blocks_.size(); ++b) {
      std::vector<torch::Tensor> features = {x};
      for (std::size_t l = 0; l < blocks_[b].size(); ++l) {
        DenseLayer& layer = blocks_[b][l];
        const std::string name = "block" + std::to_string(b + 1) + ".layer" + std::to_string(l + 1);
        const torch::Tensor narrow = segment(
            name,
            [&layer](const TensorList& in) -> TensorList {
              return {layer->bottleneck->forward(torch::cat(in, 1))};
            },
            features, layer->bottleneck.ptr().get())[0];
        features.push_back(layer->expand->forward(narrow));
      }
      x = torch::cat(features, 1);
      if (b < transitions_.size()) x = transitions_[b]->forward(x);
    }
    return head_->forward(x);
  }

  torch::Tensor loss(const Batch& batch) override {
    return torch::cross_entropy_loss(forward(batch.input), batch.target);
  }

  Batch make_batch(std::int64_t batch_size, std::uint64_t seed) const override {
    return synthetic_images(shape_, batch_size, seed);
  }

 private:
  ImageShape shape_;
  nn::Sequential stem_{nullptr}, head_{nullptr};
  std::vector<std::vector<DenseLayer>> blocks_;
  std::vector<nn::Sequential> transitions_;
};

}  // namespace

std::shared_ptr<Model> make_densenet(const DenseNetConfig& config) {
  return std::make_shared<DenseNet>(config);
}

}  // namespace actmem::models
