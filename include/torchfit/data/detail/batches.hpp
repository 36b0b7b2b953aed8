// SPDX-License-Identifier: MIT
// How the Trainer reads each kind of dataset. Map-style data is batched by index, so an epoch's order is a pure
// function of (seed, epoch): resuming mid-epoch jumps to the right batch instead of replaying the loader. A
// stream is batched in order from a sample position.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/data/collators.hpp"
#include "torchfit/data/streaming.hpp"
#include "torchfit/data/tensor_datasets.hpp"
#include "torchfit/distributed/shard.hpp"
#include "torchfit/error.hpp"

namespace torchfit::detail {

template <typename T, typename = void>
struct is_torch_dataset : std::false_type {};
template <typename T>
struct is_torch_dataset<T, std::void_t<typename T::ExampleType, decltype(std::declval<const T&>().size())>>
    : std::true_type {};

/// A list of examples as one batch of stacked tensors: torch's Stack for Example types, StackCollator for
/// TensorDicts.
template <typename Example>
Example stack_examples(std::vector<Example>&& examples) {
  return torch::data::transforms::Stack<Example>().apply_batch(std::move(examples));
}
inline TensorDict stack_examples(std::vector<TensorDict>&& examples) {
  return StackCollator{}(std::move(examples));
}

/// How the Trainer reads a dataset type. Sized (map-style) data has size() and the batch for a set of indices;
/// a stream has stream() and collate() for the examples read from it.
template <typename Data, typename = void>
struct DataTraits {
  static_assert(
      is_torch_dataset<Data>::value,
      "torchfit: a dataset must be a TensorPairDataset, a std::pair of tensors, a TensorDictDataset, a "
      "map-style torch::data::datasets::Dataset of Examples or TensorDicts, a StreamingDataset, or "
      "torchfit::Collated over a map-style or streaming dataset");
};

template <>
struct DataTraits<TensorPairDataset> {
  using Batch = torch::data::Example<>;
  static constexpr bool sized = true;
  static int64_t size(const TensorPairDataset& d) {
    if (!d.inputs.defined() || !d.targets.defined()) return 0;
    if (d.inputs.dim() == 0 || d.targets.dim() == 0 || d.inputs.size(0) != d.targets.size(0))
      throw Error(
          fmt::format("dataset: inputs and targets must have the same number of samples along dimension "
                      "0 (got {} and {})",
                      d.inputs.dim() ? d.inputs.size(0) : 0, d.targets.dim() ? d.targets.size(0) : 0));
    return d.inputs.size(0);
  }
  static Batch batch(const TensorPairDataset& d, const torch::Tensor& indices) {
    return {take_rows(d.inputs, indices), take_rows(d.targets, indices)};
  }
};

template <>
struct DataTraits<std::pair<torch::Tensor, torch::Tensor>> {
  using Batch = torch::data::Example<>;
  static constexpr bool sized = true;
  static TensorPairDataset view(const std::pair<torch::Tensor, torch::Tensor>& d) {
    return {d.first, d.second};
  }
  static int64_t size(const std::pair<torch::Tensor, torch::Tensor>& d) {
    return DataTraits<TensorPairDataset>::size(view(d));
  }
  static Batch batch(const std::pair<torch::Tensor, torch::Tensor>& d, const torch::Tensor& indices) {
    return DataTraits<TensorPairDataset>::batch(view(d), indices);
  }
};

template <>
struct DataTraits<TensorDictDataset> {
  using Batch = TensorDict;
  static constexpr bool sized = true;
  static int64_t size(const TensorDictDataset& d) { return d.size(); }
  static Batch batch(const TensorDictDataset& d, const torch::Tensor& indices) { return d.rows(indices); }
};

/// Map-style torch datasets, and torchfit's datasets of examples (TokenFileDataset, TextLineDataset).
template <typename Data>
struct DataTraits<Data, std::enable_if_t<is_torch_dataset<Data>::value>> {
  using Example = typename Data::ExampleType;
  using Batch = decltype(stack_examples(std::declval<std::vector<Example>>()));
  static constexpr bool sized = true;
  static int64_t size(const Data& d) {
    const auto n = d.size();
    if (!n.has_value())
      throw Error(
          "dataset: a torch dataset without a size() cannot be batched by index; wrap a stream in "
          "torchfit::StreamingDataset");
    return static_cast<int64_t>(*n);
  }
  static std::vector<Example> examples(const Data& d, const torch::Tensor& indices) {
    const auto* p = indices.data_ptr<int64_t>();
    std::vector<Example> out;
    out.reserve(static_cast<std::size_t>(indices.numel()));
    // torch datasets' get() is non-const by signature; reading an example does not change the dataset.
    auto& mutable_data = const_cast<Data&>(d);
    for (int64_t i = 0; i < indices.numel(); ++i)
      out.push_back(mutable_data.get(static_cast<std::size_t>(p[i])));
    return out;
  }
  static Batch batch(const Data& d, const torch::Tensor& indices) {
    return stack_examples(examples(d, indices));
  }
};

template <typename Data>
struct DataTraits<Collated<Data>, std::enable_if_t<DataTraits<Data>::sized>> {
  using Batch = TensorDict;
  static constexpr bool sized = true;
  static int64_t size(const Collated<Data>& d) { return DataTraits<Data>::size(d.dataset); }
  static Batch batch(const Collated<Data>& d, const torch::Tensor& indices) {
    return d.collator(DataTraits<Data>::examples(d.dataset, indices));
  }
};

template <typename Example>
struct DataTraits<StreamingDataset<Example>> {
  using Batch = decltype(stack_examples(std::declval<std::vector<Example>>()));
  static constexpr bool sized = false;
  static const StreamingDataset<Example>& stream(const StreamingDataset<Example>& d) { return d; }
  static Batch collate(const StreamingDataset<Example>&, std::vector<Example>&& examples) {
    return stack_examples(std::move(examples));
  }
};

template <typename Example>
struct DataTraits<Collated<StreamingDataset<Example>>> {
  using Batch = TensorDict;
  static constexpr bool sized = false;
  static const StreamingDataset<Example>& stream(const Collated<StreamingDataset<Example>>& d) {
    return d.dataset;
  }
  static Batch collate(const Collated<StreamingDataset<Example>>& d, std::vector<Example>&& examples) {
    return d.collator(std::move(examples));
  }
};

/// The number of samples in `data`, or nullopt for a stream.
template <typename Data>
std::optional<int64_t> num_samples_of(const Data& data) {
  if constexpr (DataTraits<Data>::sized)
    return DataTraits<Data>::size(data);
  else
    return std::nullopt;
}

/// The batches of one pass over sized data, or of this rank's shard of it: the order (shuffled or not, the same
/// on every rank) is fixed at construction, batch k is built on demand, so any batch can be the first one read.
template <typename Data, typename = void>
class BatchPlan {
 public:
  using Traits = DataTraits<Data>;
  using Batch = typename Traits::Batch;

  BatchPlan(const Data& data, int64_t batch_size, bool drop_last, std::optional<uint64_t> shuffle_seed,
            distributed::Shard shard = {})
      : data_(&data), batch_size_(batch_size), shard_(shard) {
    const int64_t n = Traits::size(data);
    order_ = shuffle_seed ? torch::randperm(n, at::detail::createCPUGenerator(*shuffle_seed), torch::kLong)
                          : torch::arange(n, torch::kLong);
    num_batches_ = shard.num_batches(n, batch_size, drop_last);
    for (int64_t k = 0; k < num_batches_; ++k) {
      const auto [begin, end] = shard.batch_span(k, batch_size, n);
      num_samples_ += end - begin;
    }
  }

  int64_t num_batches() const { return num_batches_; }
  /// Samples this rank reads in the pass (every sample of the data for a process alone).
  int64_t num_samples() const { return num_samples_; }

  Batch batch(int64_t k) const {
    const auto [begin, end] = shard_.batch_span(k, batch_size_, order_.numel());
    if (end <= order_.numel()) return Traits::batch(*data_, order_.slice(0, begin, end));
    return Traits::batch(*data_, order_.index_select(0, torch::arange(begin, end).remainder(order_.numel())));
  }

  /// The positions in the pass's order of the samples this rank reads, in reading order (where
  /// distributed::gather_for_metrics puts each rank's evaluation outputs).
  torch::Tensor positions() const { return shard_.positions(num_batches_, batch_size_, order_.numel()); }

 private:
  const Data* data_;
  int64_t batch_size_;
  distributed::Shard shard_;
  torch::Tensor order_;
  int64_t num_batches_ = 0;
  int64_t num_samples_ = 0;
};

/// A stream is split by its own rank and world_size, which must match `shard` in a job of several processes.
template <typename Example>
void check_stream_shard(const StreamingDataset<Example>& stream, const distributed::Shard& shard) {
  if (shard.count > 1 && (stream.rank() != shard.rank || stream.world_size() != shard.count))
    throw Error(
        fmt::format("this streaming dataset is shard {} of {}, but it is read by rank {} of {}: build it "
                    "with torchfit::distributed::world()'s rank and size",
                    stream.rank(), stream.world_size(), shard.rank, shard.count));
}

/// Evaluating on a stream: its first pass (this rank's shard) is read into memory, then batched in order.
template <typename Data>
class BatchPlan<Data, std::enable_if_t<!DataTraits<Data>::sized>> {
 public:
  using Traits = DataTraits<Data>;
  using Batch = typename Traits::Batch;

  BatchPlan(const Data& data, int64_t batch_size, bool drop_last, std::optional<uint64_t>,
            distributed::Shard shard = {})
      : data_(&data), batch_size_(batch_size) {
    const auto& stream = Traits::stream(data);
    check_stream_shard(stream, shard);
    rank_ = stream.rank();
    world_size_ = stream.world_size();
    ShardPass<Example> pass(stream.open(0), stream.rank(), stream.world_size());
    while (auto sample = pass.next()) examples_.push_back(std::move(*sample));
    const auto n = static_cast<int64_t>(examples_.size());
    num_batches_ = drop_last ? n / batch_size : (n + batch_size - 1) / batch_size;
  }

  int64_t num_batches() const { return num_batches_; }
  int64_t num_samples() const { return static_cast<int64_t>(examples_.size()); }
  /// The positions in the stream's first pass of the samples this rank reads (rank, rank + world_size, ...).
  torch::Tensor positions() const { return torch::arange(num_samples()) * world_size_ + rank_; }

  Batch batch(int64_t k) const {
    const auto begin = examples_.begin() + k * batch_size_;
    const auto end = examples_.begin() + std::min<int64_t>((k + 1) * batch_size_, num_samples());
    return Traits::collate(*data_, std::vector<Example>(begin, end));
  }

 private:
  using Example = typename std::decay_t<decltype(Traits::stream(std::declval<const Data&>()))>::ExampleType;
  const Data* data_;
  int64_t batch_size_;
  std::vector<Example> examples_;
  int64_t num_batches_ = 0;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
};

/// Training batches from a stream: `batch_size` examples at a time from this rank's sample position
/// `first_batch * batch_size`, across pass boundaries. Reading is sequential (take()); collation is a job that
/// may run on another thread.
template <typename Data>
class StreamBatches {
 public:
  using Traits = DataTraits<Data>;
  using Batch = typename Traits::Batch;

  StreamBatches(const Data& data, int64_t batch_size, int64_t first_batch)
      : data_(data), cursor_(Traits::stream(data)), batch_size_(batch_size) {
    cursor_.skip(first_batch * batch_size);
  }

  /// Reads the next batch's examples and returns the job that collates them.
  std::function<Batch()> take() {
    std::vector<Example> examples;
    examples.reserve(static_cast<std::size_t>(batch_size_));
    for (int64_t i = 0; i < batch_size_; ++i) examples.push_back(cursor_.next());
    return [data = &data_, examples = std::move(examples)]() mutable {
      return Traits::collate(*data, std::move(examples));
    };
  }

 private:
  using Example = typename std::decay_t<decltype(Traits::stream(std::declval<const Data&>()))>::ExampleType;
  const Data& data_;
  StreamCursor<Example> cursor_;
  int64_t batch_size_;
};

}  // namespace torchfit::detail
