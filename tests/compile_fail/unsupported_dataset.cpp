// SPDX-License-Identifier: MIT
// expect: a dataset must be a TensorPairDataset
#include <torchfit/torchfit.hpp>

#include <vector>

int main() {
  torch::nn::Linear model(2, 1);
  std::vector<float> samples(8);  // not a dataset torchfit knows how to batch
  auto loss = [](torch::nn::Linear&, const auto&) { return torch::zeros({}); };
  torchfit::Trainer<torch::nn::Linear, std::vector<float>> trainer(model, torchfit::TrainingArguments{},
                                                                   samples, loss);
}
