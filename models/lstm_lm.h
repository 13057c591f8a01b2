// The word language model of PyTorch's examples (word_language_model): embedding, a stacked LSTM,
// a linear decoder over the vocabulary, trained with cross entropy on the next word. The sequence
// is cut into time chunks, each a segment (embedding, LSTM, dropout, carrying the hidden state
// to the next chunk), and the decoder plus softmax into row chunks, each a segment: the decoder's
// scores, sequence x batch x vocabulary, are what dominates its memory.
#pragma once

#include <cstdint>
#include <memory>

#include "models/model.h"

namespace actmem::models {

struct LstmLmConfig {
  std::int64_t vocabulary = 33278;  // WikiText-2
  std::int64_t embedding = 200;
  std::int64_t hidden = 200;
  std::int64_t layers = 2;
  double dropout = 0.2;
  std::int64_t sequence = 35;
  std::int64_t time_chunks = 4;
  std::int64_t decoder_chunks = 10;
};

// A batch's input is [sequence, batch] word ids; its target the same ids one step later.
std::shared_ptr<Model> make_lstm_lm(const LstmLmConfig& config);

}  // namespace actmem::models
