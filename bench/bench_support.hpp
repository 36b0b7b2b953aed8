// SPDX-License-Identifier: MIT
// What the benchmarks share: the MLP of the CPU workload, a stream that discards what it formats, timing helpers.
#pragma once

#include <algorithm>
#include <chrono>
#include <streambuf>
#include <vector>

#include <torch/torch.h>

namespace bench {

using Clock = std::chrono::steady_clock;

/// Accepts and drops every character: the stream still does all its formatting, as it would for a terminal.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return traits_type::not_eof(c); }
  std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

/// The MLP 784-256-256-10 of the CPU workload.
struct MlpImpl : torch::nn::Module {
  MlpImpl()
      : fc1(register_module("fc1", torch::nn::Linear(784, 256))),
        fc2(register_module("fc2", torch::nn::Linear(256, 256))),
        fc3(register_module("fc3", torch::nn::Linear(256, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc3(torch::relu(fc2(torch::relu(fc1(x))))); }
  torch::nn::Linear fc1, fc2, fc3;
};
TORCH_MODULE(Mlp);

inline torch::Tensor mlp_loss(Mlp& model, const torch::data::Example<>& batch) {
  return torch::cross_entropy_loss(model->forward(batch.data), batch.target);
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// The median (the mean of the two middle values for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

}  // namespace bench
