#include "models/vnet.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "hooks/segment.h"

namespace actmem::models {
namespace {

namespace nn = torch::nn;

// n times: kernel^3 convolution (same padding), BatchNorm, PReLU.
nn::Sequential conv_stack(std::int64_t channels, int n, std::int64_t kernel) {
  nn::Sequential stack;
  for (int i = 0; i < n; ++i) {
    stack->push_back(
        nn::Conv3d(nn::Conv3dOptions(channels, channels, kernel).padding(kernel / 2)));
    stack->push_back(nn::BatchNorm3d(channels));
    stack->push_back(nn::PReLU(nn::PReLUOptions().num_parameters(channels)));
  }
  return stack;
}

// The down stage: a 2x2x2 stride-2 convolution doubling the channels, then the residual stack.
struct DownStageImpl : nn::Module {
  DownStageImpl(std::int64_t in, int convs, std::int64_t kernel)
      : down(register_module(
            "down", nn::Sequential(nn::Conv3d(nn::Conv3dOptions(in, 2 * in, 2).stride(2)),
                                   nn::BatchNorm3d(2 * in),
                                   nn::PReLU(nn::PReLUOptions().num_parameters(2 * in))))),
        stack(register_module("stack", conv_stack(2 * in, convs, kernel))),
        out(register_module("out", nn::PReLU(nn::PReLUOptions().num_parameters(2 * in)))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor y = down->forward(x);
    return out(stack->forward(y) + y);
  }
  nn::Sequential down, stack;
  nn::PReLU out;
};
TORCH_MODULE(DownStage);

// The up stage: a transposed 2x2x2 convolution to half the channels of `out_channels`,
// concatenated with the skip connection, then the residual stack.
struct UpStageImpl : nn::Module {
  UpStageImpl(std::int64_t in, std::int64_t out_channels, int convs, std::int64_t kernel)
      : up(register_module("up", nn::Sequential(nn::ConvTranspose3d(nn::ConvTranspose3dOptions(
                                                    in, out_channels / 2, 2)
                                                                         .stride(2)),
                                                nn::BatchNorm3d(out_channels / 2),
                                                nn::PReLU(nn::PReLUOptions().num_parameters(
                                                    out_channels / 2))))),
        stack(register_module("stack", conv_stack(out_channels, convs, kernel))),
        out(register_module("out", nn::PReLU(nn::PReLUOptions().num_parameters(out_channels)))) {}
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip) {
    const torch::Tensor y = torch::cat({up->forward(x), skip}, 1);
    return out(stack->forward(y) + y);
  }
  nn::Sequential up, stack;
  nn::PReLU out;
};
TORCH_MODULE(UpStage);

// The paper's convolutions per stage: input 1, down 2-3-3-3, up 3-3-2-1.
constexpr int kDownConvs[] = {2, 3, 3, 3};
constexpr int kUpConvs[] = {3, 3, 2, 1};

class VNet : public Model {
 public:
  explicit VNet(const VNetConfig& config) : config_(config) {
    for (std::int64_t side : config.volume) {
      if (side <= 0 || side % 16 != 0) {
        throw std::invalid_argument("VNet volume sides must be positive multiples of 16, got " +
                                    std::to_string(side));
      }
    }
    const std::int64_t c = config.channels;
    const std::int64_t k = config.kernel;
    input_conv_ = register_module(
        "input", nn::Sequential(nn::Conv3d(nn::Conv3dOptions(1, c, k).padding(k / 2)),
                                nn::BatchNorm3d(c)));
    input_out_ = register_module("input_out", nn::PReLU(nn::PReLUOptions().num_parameters(c)));
    for (int s = 0; s < 4; ++s) {
      down_.push_back(register_module("down" + std::to_string(s + 1),
                                      DownStage(c << s, kDownConvs[s], k)));
    }
    // up4 turns 16c into 16c (8c up-convolved + 8c skip), up3 16c into 8c, and so on.
    for (int s = 3; s >= 0; --s) {
      const std::int64_t in = s == 3 ? c << 4 : c << (s + 2);
      up_.push_back(register_module("up" + std::to_string(s + 1),
                                    UpStage(in, c << (s + 1), kUpConvs[3 - s], k)));
    }
    output_ = register_module("output",
                              nn::Conv3d(nn::Conv3dOptions(2 * c, config.classes, 1)));
  }

  // Per-voxel class scores, [batch, classes, depth, height, width].
  torch::Tensor forward(const torch::Tensor& input) override {
    // The input stage adds the input, repeated over its channels, to its convolution.
    torch::Tensor x = segment("input", *this, [this](const torch::Tensor& in) {
      return input_out_(input_conv_->forward(in) + in);
    }, input);
    std::vector<torch::Tensor> skips;
    for (std::size_t s = 0; s < down_.size(); ++s) {
      skips.push_back(x);
      DownStage& stage = down_[s];
      x = segment("down" + std::to_string(s + 1), *stage,
                  [&stage](const torch::Tensor& in) { return stage->forward(in); }, x);
    }
    for (std::size_t i = 0; i < up_.size(); ++i) {
      UpStage& stage = up_[i];
      x = segment(
          "up" + std::to_string(up_.size() - i),
          [&stage](const TensorList& in) -> TensorList { return {stage->forward(in[0], in[1])}; },
          {x, skips[skips.size() - 1 - i]}, stage.ptr().get())[0];
    }
    return output_(x);
  }

  torch::Tensor loss(const Batch& batch) override {
    return torch::cross_entropy_loss(forward(batch.input), batch.target);
  }

  // A random volume and random per-voxel labels.
  Batch make_batch(std::int64_t batch_size, std::uint64_t seed) const override {
    at::Generator generator = at::detail::createCPUGenerator(seed);
    const auto [d, h, w] = config_.volume;
    return {torch::randn({batch_size, 1, d, h, w}, generator),
            torch::randint(config_.classes, {batch_size, d, h, w}, generator, torch::kLong),
            batch_size};
  }

 private:
  VNetConfig config_;
  nn::Sequential input_conv_{nullptr};
  nn::PReLU input_out_{nullptr};
  std::vector<DownStage> down_;
  std::vector<UpStage> up_;
  nn::Conv3d output_{nullptr};
};

}  // namespace

std::shared_ptr<Model> make_vnet(const VNetConfig& config) { return std::make_shared<VNet>(config); }

}  // namespace actmem::models
