// A classifier of synthetic images whose body is a list of blocks, each a segment: the shape the
// ResNets share. The stem and the head run outside any segment.
#pragma once

#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>

#include <string>
#include <vector>

#include "models/model.h"

namespace actmem::models {

struct ImageShape {
  std::int64_t channels = 3;
  std::int64_t size = 32;  // height and width
  std::int64_t classes = 10;
};

class SegmentedClassifier : public Model {
 public:
  struct Block {
    std::string name;  // the segment's name, e.g. "stage2.block3"
    torch::nn::AnyModule module;
  };

  SegmentedClassifier(ImageShape shape, torch::nn::Sequential stem, std::vector<Block> blocks,
                      torch::nn::Sequential head);

  torch::Tensor forward(const torch::Tensor& input) override;
  torch::Tensor loss(const Batch& batch) override;
  Batch make_batch(std::int64_t batch_size, std::uint64_t seed) const override;

 private:
  ImageShape shape_;
  torch::nn::Sequential stem_, head_;
  std::vector<Block> blocks_;
};

// `batch_size` random images of `shape` and uniform random labels, from a generator seeded with
// `seed`.
Batch synthetic_images(const ImageShape& shape, std::int64_t batch_size, std::uint64_t seed);

}  // namespace actmem::models
