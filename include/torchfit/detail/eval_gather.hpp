// SPDX-License-Identifier: MIT
// Gathering predictions and labels over an evaluation set (HF's EvalLoopContainer and nested_concat).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/error.hpp"

namespace torchfit::detail {

/// Concatenates along dimension 0; when dimension 1 differs (sequences of different lengths) the shorter ones
/// are padded with `padding_index` on the right, as HF's nested_concat does.
inline torch::Tensor concat_padded(const std::vector<torch::Tensor>& parts, int64_t padding_index = -100) {
  if (parts.size() == 1) return parts.front();
  const auto& first = parts.front();
  int64_t rows = 0, width = 0;
  bool same_width = true;
  for (const auto& p : parts) {
    if (p.dim() != first.dim() || (p.dim() > 2 && !p.sizes().slice(2).equals(first.sizes().slice(2))))
      throw Error(
          fmt::format("cannot concatenate evaluation outputs of shapes {} and {}: only dimension 0 and "
                      "dimension 1 (padded) may differ between batches",
                      c10::str(first.sizes()), c10::str(p.sizes())));
    rows += p.size(0);
    if (p.dim() >= 2) {
      same_width = same_width && p.size(1) == first.size(1);
      width = std::max(width, p.size(1));
    }
  }
  if (first.dim() < 2 || same_width) return torch::cat(parts);
  std::vector<int64_t> shape = first.sizes().vec();
  shape[0] = rows;
  shape[1] = width;
  torch::Tensor out = torch::full(shape, padding_index, first.options());
  int64_t row = 0;
  for (const auto& p : parts) {
    out.narrow(0, row, p.size(0)).narrow(1, 0, p.size(1)).copy_(p);
    row += p.size(0);
  }
  return out;
}

/// Collects per-batch tensors on the device and moves them to the host every `accumulation_steps` batches
/// (HF's eval_accumulation_steps; unset keeps everything on the device until the end, as HF does).
class EvalGatherer {
 public:
  explicit EvalGatherer(std::optional<int64_t> accumulation_steps)
      : accumulation_steps_(accumulation_steps) {}

  void add(const torch::Tensor& t) { on_device_.push_back(t.detach()); }

  /// Called after each batch; `batches` counts the batches seen so far.
  void step(int64_t batches) {
    if (accumulation_steps_ && batches % *accumulation_steps_ == 0) to_host();
  }

  /// Everything gathered, on the host (undefined when nothing was added).
  torch::Tensor result() {
    to_host();
    if (on_host_.empty()) return {};
    return concat_padded(on_host_);
  }

 private:
  void to_host() {
    if (on_device_.empty()) return;
    on_host_.push_back(concat_padded(on_device_).cpu());
    on_device_.clear();
  }

  std::optional<int64_t> accumulation_steps_;
  std::vector<torch::Tensor> on_device_, on_host_;
};

}  // namespace torchfit::detail
