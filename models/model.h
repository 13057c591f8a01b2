// The interface the four reference models share: build one by name and size (catalogue.h), make a
// deterministic synthetic batch, compute the training loss. Models mark their segments with
// actmem::segment and know nothing of policies.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace actmem::models {

// tiny: a training step well under a second on one core, for tests. small: the main job on CPU.
// full: the published sizes, for a GPU. At every size activations, not parameters, dominate a
// step's memory.
enum class Size { kTiny, kSmall, kFull };

const char* to_string(Size size);
// "tiny", "small" or "full"; throws std::invalid_argument naming the valid sizes otherwise.
Size parse_size(const std::string& text);

struct Batch {
  torch::Tensor input;
  torch::Tensor target;
  std::int64_t samples = 0;  // images, volumes or sequences

  // The same batch on `device` (made on the CPU: the same bits on every device).
  Batch to(c10::Device device) const { return {input.to(device), target.to(device), samples}; }
};

class Model : public torch::nn::Module {
 public:
  // The model's output for `input` (class scores, per-voxel scores, next-word scores).
  virtual torch::Tensor forward(const torch::Tensor& input) = 0;
  // The scalar training loss of `batch`.
  virtual torch::Tensor loss(const Batch& batch) = 0;
  // `batch_size` synthetic samples with their targets; the same seed gives the same bits.
  virtual Batch make_batch(std::int64_t batch_size, std::uint64_t seed) const = 0;
};

}  // namespace actmem::models
