// SPDX-License-Identifier: MIT
// Collators turn a list of examples into one batch (HF's data_collator): stacking equal shapes, padding sequences
// of different lengths, and language-modelling labels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

namespace detail {

// Every example must have the first one's keys (in any order); the batch keeps the first one's order.
inline void check_same_keys(const std::vector<TensorDict>& examples, const char* collator) {
  if (examples.empty()) throw Error(fmt::format("{}: there are no examples to collate", collator));
  const TensorDict& first = examples.front();
  for (std::size_t i = 1; i < examples.size(); ++i) {
    const TensorDict& other = examples[i];
    for (const auto& [key, value] : first)
      if (!other.contains(key))
        throw Error(fmt::format("{}: example {} of the batch has no key \"{}\" that example 0 has (keys: {})",
                                collator, i, key, fmt::join(other.keys(), ", ")));
    if (other.size() != first.size())
      throw Error(fmt::format("{}: example {} of the batch has keys {} but example 0 has {}", collator, i,
                              fmt::join(other.keys(), ", "), fmt::join(first.keys(), ", ")));
  }
}

inline std::vector<torch::Tensor> column(const std::vector<TensorDict>& examples, const std::string& key) {
  std::vector<torch::Tensor> out;
  out.reserve(examples.size());
  for (const auto& e : examples) out.push_back(e.at(key));
  return out;
}

}  // namespace detail

/// Stacks each key's tensors along a new first dimension (HF's default_data_collator); every example needs the
/// same keys and, per key, the same shape. The default for datasets whose examples are TensorDicts.
struct StackCollator {
  TensorDict operator()(std::vector<TensorDict> examples) const {
    detail::check_same_keys(examples, "StackCollator");
    TensorDict batch;
    for (const auto& [key, first] : examples.front()) {
      const auto values = detail::column(examples, key);
      for (std::size_t i = 1; i < values.size(); ++i)
        if (values[i].sizes() != first.sizes())
          throw Error(
              fmt::format("StackCollator: key \"{}\" has shape {} in example {} but {} in example 0 of the "
                          "batch; pad sequences of different lengths with a PaddingCollator",
                          key, c10::str(values[i].sizes()), i, c10::str(first.sizes())));
      batch.insert(key, torch::stack(values));
    }
    return batch;
  }
};

/// Pads variable-length sequences into one batch, on the right, as HF's DataCollatorWithPadding and
/// DataCollatorForTokenClassification do. Tensors with at least one dimension are sequences along dimension 0,
/// all padded to the longest one in the batch (rounded up to `pad_to_multiple_of`); 0-dimensional tensors (a
/// class label) are stacked. Label keys are padded with `label_pad_token_id` (-100, which cross_entropy
/// ignores), `attention_mask` with 0, every other key with `pad_token_id`. An `attention_mask` (int64, 1 for a
/// real position) is added when the examples have none, from the lengths of `input_ids` (else of the first
/// sequence key).
struct PaddingCollator {
  explicit PaddingCollator(int64_t pad_token = 0, std::optional<int64_t> pad_to_multiple = std::nullopt,
                           int64_t label_pad_token = -100,
                           std::vector<std::string> labels = default_label_names())
      : pad_token_id(pad_token),
        pad_to_multiple_of(pad_to_multiple),
        label_pad_token_id(label_pad_token),
        label_names(std::move(labels)) {}

  int64_t pad_token_id;
  std::optional<int64_t> pad_to_multiple_of;
  int64_t label_pad_token_id;
  std::vector<std::string> label_names;

  TensorDict operator()(std::vector<TensorDict> examples) const {
    detail::check_same_keys(examples, "PaddingCollator");
    if (pad_to_multiple_of && *pad_to_multiple_of <= 0)
      throw Error(
          fmt::format("PaddingCollator: pad_to_multiple_of must be > 0 (got {})", *pad_to_multiple_of));
    const TensorDict& first = examples.front();
    int64_t length = 0;
    const torch::Tensor* main = first.find("input_ids");
    std::string main_key = main != nullptr && main->dim() > 0 ? "input_ids" : "";
    for (const auto& [key, value] : first) {
      if (value.dim() == 0) continue;
      if (main_key.empty()) main_key = key;
      for (std::size_t i = 0; i < examples.size(); ++i) {
        const torch::Tensor& t = examples[i].at(key);
        if (t.dim() == 0 || t.sizes().slice(1) != value.sizes().slice(1))
          throw Error(
              fmt::format("PaddingCollator: key \"{}\" has shape {} in example {} but {} in example 0 of "
                          "the batch; only dimension 0 (the sequence) may differ",
                          key, c10::str(t.sizes()), i, c10::str(value.sizes())));
        length = std::max(length, t.size(0));
      }
    }
    if (pad_to_multiple_of)
      length = (length + *pad_to_multiple_of - 1) / *pad_to_multiple_of * *pad_to_multiple_of;

    TensorDict batch;
    for (const auto& [key, value] : first) {
      const auto values = detail::column(examples, key);
      batch.insert(key, value.dim() == 0 ? torch::stack(values) : padded(values, length, padding_value(key)));
    }
    if (!main_key.empty() && !batch.contains("attention_mask")) {
      std::vector<torch::Tensor> masks;
      for (const auto& e : examples) masks.push_back(torch::ones({e.at(main_key).size(0)}, torch::kLong));
      batch.insert("attention_mask", padded(masks, length, 0));
    }
    return batch;
  }

 private:
  int64_t padding_value(const std::string& key) const {
    if (std::find(label_names.begin(), label_names.end(), key) != label_names.end())
      return label_pad_token_id;
    return key == "attention_mask" ? 0 : pad_token_id;
  }

  static torch::Tensor padded(const std::vector<torch::Tensor>& values, int64_t length, int64_t value) {
    std::vector<int64_t> shape = values.front().sizes().vec();
    shape[0] = length;
    shape.insert(shape.begin(), static_cast<int64_t>(values.size()));
    torch::Tensor out = torch::full(shape, value, values.front().options());
    for (std::size_t i = 0; i < values.size(); ++i)
      out[static_cast<int64_t>(i)].narrow(0, 0, values[i].size(0)).copy_(values[i]);
    return out;
  }
};

/// Batches for causal language modelling (HF's DataCollatorForLanguageModeling with mlm=False): `input_ids`
/// padded as PaddingCollator pads them, with an attention_mask, and `labels` a copy of `input_ids` whose padded
/// positions are -100. As in HF the labels are not shifted (the model predicts labels[t + 1] at position t);
/// with `shift_labels` they are: labels[t] = input_ids[t + 1] and the last position is -100, the layout of
/// TokenFileDataset's windows, so one loss function serves both. Unlike HF, padding is found from the
/// attention mask, not by value, so a real token equal to `pad_token_id` (GPT-2's end of text) keeps its label.
/// Labels already in the examples are replaced.
struct LanguageModelingCollator {
  explicit LanguageModelingCollator(int64_t pad_token = 0,
                                    std::optional<int64_t> pad_to_multiple = std::nullopt, bool shift = false)
      : pad_token_id(pad_token), pad_to_multiple_of(pad_to_multiple), shift_labels(shift) {}

  int64_t pad_token_id;
  std::optional<int64_t> pad_to_multiple_of;
  bool shift_labels;

  TensorDict operator()(std::vector<TensorDict> examples) const {
    for (auto& e : examples) e.erase("labels");
    TensorDict batch = PaddingCollator(pad_token_id, pad_to_multiple_of)(std::move(examples));
    const torch::Tensor& ids = batch.at("input_ids");
    torch::Tensor labels = ids.masked_fill(batch.at("attention_mask") == 0, -100);
    if (shift_labels && labels.size(1) > 0)
      labels = torch::cat(
          {labels.narrow(1, 1, labels.size(1) - 1), torch::full({labels.size(0), 1}, -100, labels.options())},
          1);
    batch["labels"] = labels;
    return batch;
  }
};

/// A dataset whose examples a `collator` turns into TensorDict batches instead of stacking them (HF's
/// `Trainer(data_collator=...)`): `Collated(dataset, PaddingCollator())`. The dataset is map-style (a torch
/// dataset or one of torchfit's example datasets) or a StreamingDataset. The collator may run on data-loading
/// worker threads (--dataloader_num_workers), several batches at once.
template <typename Data>
struct Collated {
  using ExampleType = typename Data::ExampleType;
  using Collator = std::function<TensorDict(std::vector<ExampleType>)>;

  Collated(Data data, Collator collate) : dataset(std::move(data)), collator(std::move(collate)) {}

  Data dataset;
  Collator collator;
};

template <typename Data, typename Collator>
Collated(Data, Collator) -> Collated<Data>;

}  // namespace torchfit
