// SPDX-License-Identifier: MIT
// What the digits programs share: the model, the data file's reader and the fixed train/held-out split.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

struct DigitsNetImpl : torch::nn::Module {
  DigitsNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(64, 128))),
        dropout(register_module("dropout", torch::nn::Dropout(0.2))),
        fc2(register_module("fc2", torch::nn::Linear(128, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(dropout(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(DigitsNet);

/// scikit-learn's digits.csv.gz: per line 64 pixel values (0..16), then the label. Pixels scaled to [0, 1].
inline std::pair<torch::Tensor, torch::Tensor> load_digits(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) throw std::runtime_error("cannot open " + path + " (pass --data_file PATH)");
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  char line[4096];
  while (gzgets(file, line, sizeof line) != nullptr) {
    char* p = line;
    std::vector<float> row;
    while (*p != '\0' && *p != '\n') {
      row.push_back(std::strtof(p, &p));
      if (*p == ',') ++p;
    }
    if (row.empty()) continue;
    if (row.size() != 65) {
      gzclose(file);
      throw std::runtime_error(path + ": expected 65 values per line, got " + std::to_string(row.size()));
    }
    pixels.insert(pixels.end(), row.begin(), row.end() - 1);
    labels.push_back(static_cast<int64_t>(row.back()));
  }
  gzclose(file);
  const auto n = static_cast<int64_t>(labels.size());
  auto x = torch::from_blob(pixels.data(), {n, 64}, torch::kFloat).clone() / 16.0;
  auto y = torch::from_blob(labels.data(), {n}, torch::kLong).clone();
  return {x, y};
}

/// The rows of a fixed 80/20 split, independent of the training seed: {train rows, held-out rows}.
inline std::pair<torch::Tensor, torch::Tensor> digits_split(int64_t samples) {
  const auto order = torch::randperm(samples, at::detail::createCPUGenerator(0), torch::kLong);
  const int64_t n_train = samples * 8 / 10;
  return {order.slice(0, 0, n_train), order.slice(0, n_train)};
}
