// SPDX-License-Identifier: MIT
// Datasets held as whole tensors whose first dimension indexes samples (in memory or memory-mapped): a batch is
// one copy per tensor of the rows it selects, with no per-sample copies.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

namespace detail {

/// The rows of `column` at `indices` (int64), as a tensor of their own: a batch never aliases its dataset, so a
/// loss function that writes into its batch cannot change the data. Consecutive indices inside the column (an
/// unshuffled pass, as evaluation reads) on the host are one memcpy, a few µs less per batch than the general
/// gather; anything else, out-of-range indices included, goes to index_select and its checks.
inline torch::Tensor take_rows(const torch::Tensor& column, const torch::Tensor& indices) {
  const int64_t n = indices.numel();
  const bool plain_host_column = column.is_cpu() && column.layout() == torch::kStrided &&
                                 !column.is_quantized() && column.is_contiguous() &&
                                 !column.requires_grad() && column.dim() > 0;
  if (n == 0 || !plain_host_column || !indices.is_cpu() || indices.scalar_type() != torch::kLong ||
      !indices.is_contiguous() || indices.dim() != 1)
    return column.index_select(0, indices);
  const int64_t* index = indices.data_ptr<int64_t>();
  const int64_t first = index[0];
  if (first < 0 || first + n > column.size(0)) return column.index_select(0, indices);
  for (int64_t i = 1; i < n; ++i)
    if (index[i] != first + i) return column.index_select(0, indices);
  auto sizes = column.sizes().vec();
  sizes[0] = n;
  torch::Tensor rows = torch::empty(sizes, column.options());
  const auto row_bytes = static_cast<std::size_t>(column.numel() / column.size(0) * column.element_size());
  std::memcpy(rows.data_ptr(), static_cast<const char*>(column.data_ptr()) + first * row_bytes,
              static_cast<std::size_t>(n) * row_bytes);
  return rows;
}

}  // namespace detail

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

  /// The rows at `indices` (int64), one copy per column.
  TensorDict rows(const torch::Tensor& indices) const {
    TensorDict batch;
    for (const auto& [key, value] : columns_) batch.insert(key, detail::take_rows(value, indices));
    return batch;
  }

 private:
  TensorDict columns_;
};

}  // namespace torchfit
