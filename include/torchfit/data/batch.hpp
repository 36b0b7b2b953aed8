// SPDX-License-Identifier: MIT
// What a batch is: torch's Example (inputs, target) or a TensorDict of named tensors (HF's dict[str, Tensor]), and
// the few things the Trainer asks of any batch (move it, count it, find its labels and inputs).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "torchfit/error.hpp"

namespace torchfit {

/// Named tensors in insertion order (HF's `dict[str, Tensor]` batch, `model(**batch)`): a transformer's
/// `input_ids`, `attention_mask` and `labels`, or a tabular model's `inputs` and `labels`. Keys are unique; a
/// few keys make a linear search faster than a tree.
class TensorDict {
 public:
  using Item = std::pair<std::string, torch::Tensor>;

  TensorDict() = default;
  TensorDict(std::initializer_list<Item> items) {
    for (const auto& [key, value] : items) insert(key, value);
  }

  /// Adds `key`; Error if it is already there (use operator[] to replace).
  void insert(std::string key, torch::Tensor value) {
    if (contains(key)) throw Error(fmt::format("TensorDict: key \"{}\" is already present", key));
    items_.emplace_back(std::move(key), std::move(value));
  }

  /// The tensor under `key`, added (undefined) at the end when missing, as std::map and Python's dict do.
  torch::Tensor& operator[](std::string_view key) {
    if (torch::Tensor* t = find(key)) return *t;
    items_.emplace_back(std::string(key), torch::Tensor());
    return items_.back().second;
  }

  /// The tensor under `key`; Error naming the key and the keys present when it is missing.
  const torch::Tensor& at(std::string_view key) const {
    if (const torch::Tensor* t = find(key)) return *t;
    throw Error(fmt::format("TensorDict has no key \"{}\" (keys: {})", key, fmt::join(keys(), ", ")));
  }
  torch::Tensor& at(std::string_view key) { return const_cast<torch::Tensor&>(std::as_const(*this).at(key)); }

  /// The tensor under `key`, or nullptr.
  const torch::Tensor* find(std::string_view key) const {
    for (const auto& item : items_)
      if (item.first == key) return &item.second;
    return nullptr;
  }
  torch::Tensor* find(std::string_view key) {
    return const_cast<torch::Tensor*>(std::as_const(*this).find(key));
  }

  bool contains(std::string_view key) const { return find(key) != nullptr; }

  /// Removes `key`; false when it was not there.
  bool erase(std::string_view key) {
    for (auto it = items_.begin(); it != items_.end(); ++it)
      if (it->first == key) {
        items_.erase(it);
        return true;
      }
    return false;
  }

  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    out.reserve(items_.size());
    for (const auto& item : items_) out.push_back(item.first);
    return out;
  }

  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }
  auto begin() { return items_.begin(); }
  auto end() { return items_.end(); }

 private:
  std::vector<Item> items_;
};

/// The keys HF treats as labels when TrainingArguments.label_names is not given (HF's default for most models
/// is `labels`; its collators rename a dataset's `label` column to `labels`, torchfit accepts either).
inline const std::vector<std::string>& default_label_names() {
  static const std::vector<std::string> names = {"labels", "label"};
  return names;
}

namespace detail {

/// A batch in page-locked host memory (dataloader_pin_memory): from there a non_blocking copy to a CUDA device is
/// asynchronous, where from pageable memory CUDA stages it and the host waits. Needs a CUDA build.
inline torch::Tensor pinned(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && !t.is_pinned() ? t.pin_memory() : t;
}
inline torch::data::Example<> pinned(const torch::data::Example<>& b) {
  return {pinned(b.data), pinned(b.target)};
}
inline torch::data::TensorExample pinned(const torch::data::TensorExample& b) {
  return torch::data::TensorExample(pinned(b.data));
}
inline TensorDict pinned(const TensorDict& b) {
  TensorDict out;
  for (const auto& [key, value] : b) out.insert(key, pinned(value));
  return out;
}

/// Moves every tensor of a batch to `device` (non-blocking: asynchronous from pinned memory); a tensor already
/// there is returned without a call through the dispatcher.
inline torch::Tensor to_device(const torch::Tensor& t, const torch::Device& device) {
  return !t.defined() || t.device() == device ? t : t.to(device, /*non_blocking=*/true);
}
inline torch::data::Example<> to_device(const torch::data::Example<>& b, const torch::Device& device) {
  return {to_device(b.data, device), to_device(b.target, device)};
}
inline torch::data::TensorExample to_device(const torch::data::TensorExample& b,
                                            const torch::Device& device) {
  return torch::data::TensorExample(to_device(b.data, device));
}
inline TensorDict to_device(const TensorDict& b, const torch::Device& device) {
  TensorDict out;
  for (const auto& [key, value] : b) out.insert(key, to_device(value, device));
  return out;
}

/// The labels of a batch, for compute_metrics (undefined for unlabeled batches). A TensorDict's labels are its
/// first key among `label_names` (default: `labels`, then `label`) or, when several label names are given and
/// all present, those tensors stacked along a new last dimension (HF passes them as a tuple).
inline torch::Tensor labels_of(const torch::data::Example<>& b, const std::vector<std::string>& = {}) {
  return b.target;
}
inline torch::Tensor labels_of(const torch::data::TensorExample&, const std::vector<std::string>& = {}) {
  return {};
}
inline torch::Tensor labels_of(const TensorDict& b, const std::vector<std::string>& label_names = {}) {
  if (label_names.size() <= 1) {
    for (const auto& name : label_names.empty() ? default_label_names() : label_names)
      if (const torch::Tensor* t = b.find(name)) return *t;
    return {};
  }
  std::vector<torch::Tensor> parts;
  for (const auto& name : label_names) {
    const torch::Tensor* t = b.find(name);
    if (t == nullptr) return {};  // HF: labels only when every label name is in the batch
    if (!parts.empty() && t->sizes() != parts.front().sizes())
      throw Error(
          fmt::format("label \"{}\" has shape {} but label \"{}\" has shape {}: several labels are "
                      "gathered stacked, so their shapes must match",
                      name, c10::str(t->sizes()), label_names.front(), c10::str(parts.front().sizes())));
    parts.push_back(*t);
  }
  return torch::stack(parts, -1);
}

/// The tensor whose elements count as input tokens (HF's `inputs[main_input_name]`): an Example's data, a
/// TensorDict's `input_ids` or else its first tensor.
inline const torch::Tensor& input_of(const torch::data::Example<>& b) { return b.data; }
inline const torch::Tensor& input_of(const torch::data::TensorExample& b) { return b.data; }
inline const torch::Tensor& input_of(const TensorDict& b) {
  if (const torch::Tensor* ids = b.find("input_ids")) return *ids;
  if (b.empty()) throw Error("an empty TensorDict batch has no input tensor");
  return b.begin()->second;
}

/// Number of samples in a batch: the first dimension of its inputs (HF's find_batch_size: of the first tensor
/// that has one).
inline int64_t batch_size_of(const torch::data::Example<>& b) { return b.data.size(0); }
inline int64_t batch_size_of(const torch::data::TensorExample& b) { return b.data.size(0); }
inline int64_t batch_size_of(const TensorDict& b) {
  for (const auto& [key, value] : b)
    if (value.defined() && value.dim() > 0) return value.size(0);
  throw Error(fmt::format("cannot tell the batch size of a TensorDict without a batched tensor (keys: {})",
                          fmt::join(b.keys(), ", ")));
}

}  // namespace detail
}  // namespace torchfit
