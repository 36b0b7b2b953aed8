// SPDX-License-Identifier: MIT
// expect: loss_fn\(model, batch\) must return a torch::Tensor or a torchfit::LossOutput
#include <torchfit/torchfit.hpp>

int main() {
  auto data = std::make_pair(torch::zeros({8, 2}), torch::zeros({8, 1}));
  auto loss = [](torch::nn::Linear& m, const torch::data::Example<>& b) {
    return torch::mse_loss(m->forward(b.data), b.target).item<double>();  // a number, not a tensor
  };
  torchfit::Trainer trainer(torch::nn::Linear(2, 1), torchfit::TrainingArguments{}, data, loss);
}
