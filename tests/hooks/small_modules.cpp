#include "tests/hooks/small_modules.h"

namespace actmem::testing {
namespace {

namespace nn = torch::nn;

// Runs `x` through `blocks` in order, each block a segment named "<prefix><index>".
torch::Tensor run_as_segments(std::vector<nn::Sequential>& blocks, const std::string& prefix,
                              torch::Tensor x) {
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    nn::Sequential& block = blocks[i];
    x = segment(prefix + std::to_string(i),
                [&](const TensorList& in) -> TensorList { return {block->forward(in[0])}; },
                {x}, block.ptr().get())[0];
  }
  return x;
}

// conv -> BN -> ReLU -> dropout, `blocks` times, each block a segment; then a linear head.
struct ConvStack : LossModule {
  ConvStack(int blocks, int batch, int channels, int size) {
    for (int i = 0; i < blocks; ++i) {
      auto block = nn::Sequential(
          nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).padding(1).bias(false)),
          nn::BatchNorm2d(channels), nn::ReLU(), nn::Dropout(0.1));
      blocks_.push_back(register_module("block" + std::to_string(i), block));
    }
    head_ = register_module("head", nn::Linear(channels, 10));
    input_ = torch::randn({batch, channels, size, size});
    target_ = torch::randint(0, 10, {batch});
  }
  torch::Tensor loss() override {
    const torch::Tensor x = run_as_segments(blocks_, "block", input_);
    return torch::cross_entropy_loss(head_->forward(x.mean({2, 3})), target_);
  }
  std::vector<nn::Sequential> blocks_;
  nn::Linear head_{nullptr};
  torch::Tensor input_, target_;
};

struct Mlp : LossModule {
  Mlp() {
    for (int i = 0; i < 4; ++i) {
      layers_.push_back(register_module(
          "layer" + std::to_string(i),
          nn::Sequential(nn::Linear(256, 256), nn::ReLU(), nn::Dropout(0.2))));
    }
    head_ = register_module("head", nn::Linear(256, 10));
    input_ = torch::randn({64, 256});
    target_ = torch::randint(0, 10, {64});
  }
  torch::Tensor loss() override {
    return torch::cross_entropy_loss(head_->forward(run_as_segments(layers_, "layer", input_)),
                                     target_);
  }
  std::vector<nn::Sequential> layers_;
  nn::Linear head_{nullptr};
  torch::Tensor input_, target_;
};

// relu(bn(conv(x))) + conv1x1(x), three blocks, each a segment.
struct TwoBranch : LossModule {
  TwoBranch() {
    for (int i = 0; i < 3; ++i) {
      main_.push_back(register_module(
          "main" + std::to_string(i),
          nn::Sequential(nn::Conv2d(nn::Conv2dOptions(16, 16, 3).padding(1)),
                         nn::BatchNorm2d(16), nn::ReLU())));
      skip_.push_back(register_module("skip" + std::to_string(i),
                                      nn::Conv2d(nn::Conv2dOptions(16, 16, 1))));
    }
    input_ = torch::randn({8, 16, 16, 16});
  }
  torch::Tensor loss() override {
    torch::Tensor x = input_;
    for (std::size_t i = 0; i < main_.size(); ++i) {
      x = segment("block" + std::to_string(i),
                  [&, i](const TensorList& in) -> TensorList {
                    return {main_[i]->forward(in[0]) + skip_[i]->forward(in[0])};
                  },
                  {x}, main_[i].ptr().get())[0];
    }
    return x.pow(2).mean();
  }
  std::vector<nn::Sequential> main_;
  std::vector<nn::Conv2d> skip_;
  torch::Tensor input_;
};

// An LSTM cell unrolled over 12 steps, in chunks of 4 steps per segment.
struct LstmLoop : LossModule {
  LstmLoop() {
    cell_ = register_module("cell", nn::LSTMCell(32, 64));
    head_ = register_module("head", nn::Linear(64, 1));
    input_ = torch::randn({12, 16, 32});
  }
  torch::Tensor loss() override {
    torch::Tensor h = torch::zeros({16, 64});
    torch::Tensor c = torch::zeros({16, 64});
    for (int chunk = 0; chunk < 3; ++chunk) {
      auto out = segment(
          "chunk" + std::to_string(chunk),
          [&, chunk](const TensorList& in) -> TensorList {
            torch::Tensor hh = in[0], cc = in[1];
            for (int t = chunk * 4; t < chunk * 4 + 4; ++t) {
              std::tie(hh, cc) = cell_->forward(input_[t], std::make_tuple(hh, cc));
            }
            return {hh, cc};
          },
          {h, c}, cell_.ptr().get());
      h = out[0];
      c = out[1];
    }
    return head_->forward(h).pow(2).mean();
  }
  nn::LSTMCell cell_{nullptr};
  nn::Linear head_{nullptr};
  torch::Tensor input_;
};

template <typename M, typename... Args>
std::function<std::shared_ptr<LossModule>()> seeded(Args... args) {
  return [=] {
    torch::manual_seed(1234);
    return std::static_pointer_cast<LossModule>(std::make_shared<M>(args...));
  };
}

}  // namespace

std::vector<SmallModuleCase> small_module_cases() {
  return {{"conv_bn_relu_dropout", seeded<ConvStack>(4, 8, 16, 16), 4},
          {"mlp", seeded<Mlp>(), 4},
          {"two_branch_skip", seeded<TwoBranch>(), 3},
          {"lstm_cell_loop", seeded<LstmLoop>(), 3}};
}

std::shared_ptr<LossModule> make_deep_conv_stack(int blocks, int batch) {
  return seeded<ConvStack>(blocks, batch, 32, 32)();
}

}  // namespace actmem::testing
