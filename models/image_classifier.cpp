#include "models/image_classifier.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>

#include "hooks/segment.h"

namespace actmem::models {

SegmentedClassifier::SegmentedClassifier(ImageShape shape, torch::nn::Sequential stem,
                                         std::vector<Block> blocks, torch::nn::Sequential head)
    : shape_(shape),
      stem_(register_module("stem", std::move(stem))),
      head_(register_module("head", std::move(head))),
      blocks_(std::move(blocks)) {
  for (Block& block : blocks_) {
    std::string key = block.name;  // module names may not contain dots
    std::replace(key.begin(), key.end(), '.', '_');
    register_module(key, block.module.ptr());
  }
}

torch::Tensor SegmentedClassifier::forward(const torch::Tensor& input) {
  torch::Tensor x = stem_->forward(input);
  for (Block& block : blocks_) {
    torch::nn::AnyModule& module = block.module;
    x = segment(block.name, *module.ptr(),
                [&module](const torch::Tensor& in) { return module.forward(in); }, x);
  }
  return head_->forward(x);
}

torch::Tensor SegmentedClassifier::loss(const Batch& batch) {
  return torch::cross_entropy_loss(forward(batch.input), batch.target);
}

Batch SegmentedClassifier::make_batch(std::int64_t batch_size, std::uint64_t seed) const {
  return synthetic_images(shape_, batch_size, seed);
}

Batch synthetic_images(const ImageShape& shape, std::int64_t batch_size, std::uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  return {torch::randn({batch_size, shape.channels, shape.size, shape.size}, generator),
          torch::randint(shape.classes, {batch_size}, generator, torch::kLong), batch_size};
}

}  // namespace actmem::models
