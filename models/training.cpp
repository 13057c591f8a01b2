#include "models/training.h"

namespace actmem::models {

std::unique_ptr<torch::optim::SGD> make_optimizer(Model& model) {
  return std::make_unique<torch::optim::SGD>(model.parameters(),
                                             torch::optim::SGDOptions(0.01).momentum(0.9));
}

double train_step(Model& model, torch::optim::Optimizer& optimizer, const Batch& batch) {
  model.train();
  optimizer.zero_grad();
  torch::Tensor loss = model.loss(batch);
  loss.backward();
  optimizer.step();
  return loss.item<double>();
}

}  // namespace actmem::models
