// SPDX-License-Identifier: MIT
// Datasets held as whole tensors whose first dimension indexes samples (in memory or memory-mapped): a batch is
// one index_select per tensor, with no per-sample copies.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

/// Inputs and targets as two tensors; batches are torch::data::Example<>. A `std::pair<torch::Tensor,
/// torch::Tensor>` is accepted wherever this is.
struct TensorPairDataset {
  torch::Tensor inputs;
  torch::Tensor targets;
};

/// Named columns (HF's Dataset in torch format): every tensor's dimension 0 indexes the same samples, and a
/// batch is a TensorDict with the same keys. Columns may be memory-mapped (open_npy, open_safetensors), so only
/// the rows a batch selects are read from disk.
class TensorDictDataset {
 public:
  /// Error naming the column when the columns disagree on the number of samples or one is 0-dimensional.
  explicit TensorDictDataset(TensorDict columns) : columns_(std::move(columns)) {
    if (columns_.empty()) throw Error("TensorDictDataset: no columns were given");
    const auto& [first_key, first] = *columns_.begin();
    for (const auto& [key, value] : columns_) {
      if (!value.defined() || value.dim() == 0)
        throw Error(
            fmt::format("TensorDictDataset: column \"{}\" has no dimension 0 to index samples by", key));
      if (value.size(0) != first.size(0))
        throw Error(fmt::format("TensorDictDataset: column \"{}\" has {} samples but column \"{}\" has {}",
                                key, value.size(0), first_key, first.size(0)));
    }
  }
  TensorDictDataset(std::initializer_list<TensorDict::Item> columns)
      : TensorDictDataset(TensorDict(columns)) {}

  int64_t size() const { return columns_.begin()->second.size(0); }
  const TensorDict& columns() const { return columns_; }

  /// The rows at `indices` (int64), one index_select per column.
  TensorDict rows(const torch::Tensor& indices) const {
    TensorDict batch;
    for (const auto& [key, value] : columns_) batch.insert(key, value.index_select(0, indices));
    return batch;
  }

 private:
  TensorDict columns_;
};

}  // namespace torchfit
