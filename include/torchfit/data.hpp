// SPDX-License-Identifier: MIT
// Datasets the Trainer accepts and how it batches them. Batching is by index, so an epoch's order is a pure
// function of (seed, epoch): resuming mid-epoch jumps to the right batch instead of replaying the loader.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <future>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/error.hpp"

namespace torchfit {

/// Inputs and targets as two tensors whose first dimension indexes samples; a batch is one index_select each
/// (no per-sample copies). A `std::pair<torch::Tensor, torch::Tensor>` is accepted wherever this is.
struct TensorPairDataset {
  torch::Tensor inputs;
  torch::Tensor targets;
};

namespace detail {

template <typename T, typename = void>
struct is_torch_dataset : std::false_type {};
template <typename T>
struct is_torch_dataset<T, std::void_t<typename T::ExampleType, decltype(std::declval<const T&>().size())>>
    : std::true_type {};

/// How the Trainer reads a dataset type: its size and the batch for a set of indices.
template <typename Data, typename = void>
struct DataTraits {
  static_assert(is_torch_dataset<Data>::value,
                "torchfit: a dataset must be a torchfit::TensorPairDataset, a std::pair of tensors or a "
                "torch::data::datasets::Dataset (map-style) whose examples torch::data::transforms::Stack can stack");
};

template <>
struct DataTraits<TensorPairDataset> {
  using Batch = torch::data::Example<>;
  static int64_t size(const TensorPairDataset& d) {
    if (!d.inputs.defined() || !d.targets.defined()) return 0;
    if (d.inputs.dim() == 0 || d.targets.dim() == 0 || d.inputs.size(0) != d.targets.size(0))
      throw Error("dataset: inputs and targets must have the same number of samples along dimension 0 (got " +
                  std::to_string(d.inputs.dim() ? d.inputs.size(0) : 0) + " and " +
                  std::to_string(d.targets.dim() ? d.targets.size(0) : 0) + ")");
    return d.inputs.size(0);
  }
  static Batch batch(const TensorPairDataset& d, const torch::Tensor& indices) {
    return {d.inputs.index_select(0, indices), d.targets.index_select(0, indices)};
  }
};

template <>
struct DataTraits<std::pair<torch::Tensor, torch::Tensor>> {
  using Batch = torch::data::Example<>;
  static TensorPairDataset view(const std::pair<torch::Tensor, torch::Tensor>& d) { return {d.first, d.second}; }
  static int64_t size(const std::pair<torch::Tensor, torch::Tensor>& d) {
    return DataTraits<TensorPairDataset>::size(view(d));
  }
  static Batch batch(const std::pair<torch::Tensor, torch::Tensor>& d, const torch::Tensor& indices) {
    return DataTraits<TensorPairDataset>::batch(view(d), indices);
  }
};

template <typename Data>
struct DataTraits<Data, std::enable_if_t<is_torch_dataset<Data>::value>> {
  using Example = typename Data::ExampleType;
  using Batch = Example;  // Stack collates a vector of examples into one example of stacked tensors
  static int64_t size(const Data& d) {
    const auto n = d.size();
    if (!n.has_value()) throw Error("dataset: the Trainer needs a map-style dataset with a known size()");
    return static_cast<int64_t>(*n);
  }
  static Batch batch(const Data& d, const torch::Tensor& indices) {
    const auto* p = indices.data_ptr<int64_t>();
    std::vector<Example> examples;
    examples.reserve(static_cast<std::size_t>(indices.numel()));
    // torch datasets' get() is non-const by signature; reading an example does not change the dataset.
    auto& mutable_data = const_cast<Data&>(d);
    for (int64_t i = 0; i < indices.numel(); ++i) examples.push_back(mutable_data.get(static_cast<std::size_t>(p[i])));
    return torch::data::transforms::Stack<Example>().apply_batch(std::move(examples));
  }
};

/// Moves every tensor of a batch to `device` (non-blocking from pinned memory).
inline torch::data::Example<> to_device(const torch::data::Example<>& b, const torch::Device& device) {
  return {b.data.to(device, /*non_blocking=*/true), b.target.to(device, /*non_blocking=*/true)};
}
inline torch::data::TensorExample to_device(const torch::data::TensorExample& b, const torch::Device& device) {
  return torch::data::TensorExample(b.data.to(device, /*non_blocking=*/true));
}

/// The labels of a batch, for compute_metrics (undefined for unlabeled batches).
inline torch::Tensor labels_of(const torch::data::Example<>& b) { return b.target; }
inline torch::Tensor labels_of(const torch::data::TensorExample&) { return {}; }

/// Number of samples in a batch (its first dimension).
inline int64_t batch_size_of(const torch::data::Example<>& b) { return b.data.size(0); }
inline int64_t batch_size_of(const torch::data::TensorExample& b) { return b.data.size(0); }

/// The batches of one pass over a dataset: the order (shuffled or not) is fixed at construction, batch k is built
/// on demand, so any batch can be the first one read.
template <typename Data>
class BatchPlan {
 public:
  using Traits = DataTraits<Data>;
  using Batch = typename Traits::Batch;

  BatchPlan(const Data& data, int64_t batch_size, bool drop_last, std::optional<uint64_t> shuffle_seed)
      : data_(&data), batch_size_(batch_size) {
    const int64_t n = Traits::size(data);
    order_ = shuffle_seed ? torch::randperm(n, at::detail::createCPUGenerator(*shuffle_seed), torch::kLong)
                          : torch::arange(n, torch::kLong);
    num_batches_ = drop_last ? n / batch_size : (n + batch_size - 1) / batch_size;
  }

  int64_t num_batches() const { return num_batches_; }
  int64_t num_samples() const { return order_.numel(); }

  Batch batch(int64_t k) const {
    const int64_t begin = k * batch_size_;
    const int64_t end = std::min(begin + batch_size_, order_.numel());
    return Traits::batch(*data_, order_.slice(0, begin, end));
  }

 private:
  const Data* data_;
  int64_t batch_size_;
  torch::Tensor order_;
  int64_t num_batches_ = 0;
};

/// Reads the batches of a plan in order from `first`; with `workers` > 0, that many threads build the next
/// batches ahead of the training step (useful when a dataset's get() is expensive). The order never changes.
template <typename Data>
class BatchPrefetcher {
 public:
  using Batch = typename BatchPlan<Data>::Batch;

  BatchPrefetcher(const BatchPlan<Data>& plan, int64_t first, int64_t workers)
      : plan_(plan), next_(first), queued_(first), depth_(std::max<int64_t>(workers, 0) * 2) {
    fill();
  }
  ~BatchPrefetcher() {
    for (auto& f : ahead_) f.wait();  // batches still being built read the plan
  }
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  Batch next() {
    if (depth_ == 0) return plan_.batch(next_++);
    Batch batch = ahead_.front().get();
    ahead_.pop_front();
    fill();
    return batch;
  }

 private:
  void fill() {
    while (static_cast<int64_t>(ahead_.size()) < depth_ && queued_ < plan_.num_batches()) {
      const int64_t k = queued_++;
      ahead_.push_back(std::async(std::launch::async, [this, k] { return plan_.batch(k); }));
    }
  }

  const BatchPlan<Data>& plan_;
  int64_t next_;    // next batch to read without workers
  int64_t queued_;  // next batch to hand to a worker
  int64_t depth_;
  std::deque<std::future<Batch>> ahead_;
};

}  // namespace detail
}  // namespace torchfit
