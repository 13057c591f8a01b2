#include "models/lstm_lm.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <string>
#include <tuple>
#include <vector>

#include "hooks/segment.h"

namespace actmem::models {
namespace {

namespace nn = torch::nn;

class LstmLm : public Model {
 public:
  explicit LstmLm(const LstmLmConfig& config)
      : config_(config),
        encoder_(register_module("encoder", nn::Embedding(config.vocabulary, config.embedding))),
        rnn_(register_module("rnn", stacked_lstm(config))),
        decoder_(register_module("decoder", nn::Linear(config.hidden, config.vocabulary))),
        dropout_(register_module("dropout", nn::Dropout(config.dropout))) {}

  // Scores over the vocabulary, [sequence, batch, vocabulary].
  torch::Tensor forward(const torch::Tensor& input) override {
    return decoder_->forward(recurrent(input));
  }

  // Mean cross entropy of the next word; the decoder runs in row chunks, each a segment that
  // returns its chunk's summed loss, so no chunk's scores outlive it.
  torch::Tensor loss(const Batch& batch) override {
    const torch::Tensor hidden = recurrent(batch.input).reshape({-1, config_.hidden});
    const torch::Tensor target = batch.target.reshape({-1});
    const auto rows = hidden.chunk(config_.decoder_chunks, 0);
    const auto targets = target.chunk(config_.decoder_chunks, 0);
    torch::Tensor total;
    for (std::size_t j = 0; j < rows.size(); ++j) {
      const torch::Tensor part = segment(
          "decoder" + std::to_string(j),
          [this](const TensorList& in) -> TensorList {
            return {torch::cross_entropy_loss(decoder_->forward(in[0]), in[1], {},
                                              at::Reduction::Sum)};
          },
          {rows[j], targets[j]}, decoder_.ptr().get())[0];
      total = j == 0 ? part : total + part;
    }
    return total / static_cast<double>(target.numel());
  }

  Batch make_batch(std::int64_t batch_size, std::uint64_t seed) const override {
    at::Generator generator = at::detail::createCPUGenerator(seed);
    const torch::Tensor words =
        torch::randint(config_.vocabulary, {config_.sequence + 1, batch_size}, generator,
                       torch::kLong);
    return {words.slice(0, 0, config_.sequence).contiguous(),
            words.slice(0, 1, config_.sequence + 1).contiguous(), batch_size};
  }

 private:
  // The LSTM's output for every step, [sequence, batch, hidden], one segment per time chunk; the
  // hidden state starts at zero and flows from chunk to chunk.
  torch::Tensor recurrent(const torch::Tensor& input) {
    const std::int64_t batch = input.size(1);
    const auto options = torch::TensorOptions().device(input.device());
    torch::Tensor h = torch::zeros({config_.layers, batch, config_.hidden}, options);
    torch::Tensor c = torch::zeros({config_.layers, batch, config_.hidden}, options);
    std::vector<torch::Tensor> outputs;
    const auto chunks = input.chunk(config_.time_chunks, 0);
    for (std::size_t k = 0; k < chunks.size(); ++k) {
      const TensorList out = segment(
          "time" + std::to_string(k),
          [this](const TensorList& in) -> TensorList {
            const torch::Tensor embedded = dropout_->forward(encoder_->forward(in[0]));
            auto [y, h_out, c_out] = stacked_forward(embedded, in[1], in[2]);
            return {dropout_->forward(y), h_out, c_out};
          },
          {chunks[k], h, c}, this);
      outputs.push_back(out[0]);
      h = out[1];
      c = out[2];
    }
    return torch::cat(outputs, 0);
  }

  // The stacked LSTM as one single-layer LSTM per layer, with the dropout between layers that
  // nn::LSTM's own `dropout` option applies, as nn::Dropout. The same computation, but on CUDA
  // nn::LSTM(dropout > 0) runs cuDNN's RNN, which draws its dropout masks from a state of its own,
  // seeded from the CUDA generator and advanced by every forward: a segment's rerun, which
  // restores the generator, would reseed it and draw other masks. nn::Dropout draws from the
  // generator, which a rerun restores.
  static nn::ModuleList stacked_lstm(const LstmLmConfig& config) {
    nn::ModuleList layers;
    for (std::int64_t i = 0; i < config.layers; ++i) {
      layers->push_back(
          nn::LSTM(nn::LSTMOptions(i == 0 ? config.embedding : config.hidden, config.hidden)));
    }
    return layers;
  }

  // The stack's output and final states ([layers, batch, hidden] each) from initial states h0, c0.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> stacked_forward(
      torch::Tensor y, const torch::Tensor& h0, const torch::Tensor& c0) {
    std::vector<torch::Tensor> h, c;
    for (std::size_t i = 0; i < rnn_->size(); ++i) {
      if (i > 0) y = dropout_->forward(y);
      const auto index = static_cast<std::int64_t>(i);
      auto [out, state] = rnn_->at<nn::LSTMImpl>(i).forward(
          y, std::make_tuple(h0.narrow(0, index, 1), c0.narrow(0, index, 1)));
      y = out;
      h.push_back(std::get<0>(state));
      c.push_back(std::get<1>(state));
    }
    return {y, torch::cat(h, 0), torch::cat(c, 0)};
  }

  LstmLmConfig config_;
  nn::Embedding encoder_;
  nn::ModuleList rnn_;
  nn::Linear decoder_;
  nn::Dropout dropout_;
};

}  // namespace

std::shared_ptr<Model> make_lstm_lm(const LstmLmConfig& config) {
  return std::make_shared<LstmLm>(config);
}

}  // namespace actmem::models
