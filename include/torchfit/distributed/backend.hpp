// SPDX-License-Identifier: MIT
// What the training loop needs from a multi-process job, independent of how it is done: a few collectives and a
// gradient reducer. <torchfit/distributed.hpp> provides them on PyTorch's c10d (TCPStore, Gloo or NCCL, and the
// Reducer of DistributedDataParallel); the core includes only this interface, so programs that never run on
// several processes need neither c10d's headers nor Gloo.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/distributed/launch.hpp"

namespace torchfit::distributed {

/// Averages gradients across ranks during backward (DistributedDataParallel's Reducer): bucketed all-reduces
/// start as the buckets' gradients become ready.
class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  /// Makes the backward pass of `loss`, which must follow, average the gradients (HF syncs only on the last
  /// micro-step of an accumulation group: a backward without this call accumulates locally, as under no_sync).
  virtual void prepare_for_backward(const torch::Tensor& loss) = 0;
};

/// How the gradient reducer buckets and finds gradients (HF's ddp_bucket_cap_mb and ddp_find_unused_parameters).
struct ReducerOptions {
  double bucket_cap_mb = 25;
  bool find_unused_parameters = false;
};

/// How to form the job (HF's ddp_backend and ddp_timeout).
struct BackendOptions {
  std::string backend;  ///< "gloo" or "nccl"
  std::chrono::milliseconds timeout{std::chrono::seconds(1800)};
  torch::Device device{torch::kCPU};  ///< this rank's device (NCCL's tensors live there)
};

enum class ReduceOp { sum, max };

/// The collectives of a job of several processes. Every call is collective: each rank makes it, in the same
/// order. A rank that died or hangs makes the others' call throw DistributedError naming it (within the timeout).
/// `what` names the operation in such errors ("the gradient all-reduce", "gathering eval predictions").
class Backend {
 public:
  virtual ~Backend() = default;

  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op, const std::string& what) = 0;
  /// Every rank's `tensor`, in rank order; the tensors must have the same shape and dtype on every rank.
  virtual std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor, const std::string& what) = 0;
  /// Rank 0's values into `tensors` on every rank.
  virtual void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) = 0;
  virtual void barrier(const std::string& what) = 0;
  /// A reducer averaging the gradients of `parameters` (`names` for its messages).
  virtual std::unique_ptr<GradientReducer> make_reducer(std::vector<torch::Tensor> parameters,
                                                        std::vector<std::string> names,
                                                        const ReducerOptions& options) = 0;
  /// Runs `body`, whose failure may come from a collective started earlier (the gradient all-reduces of a
  /// backward pass): a failure while a rank is gone or stuck becomes a DistributedError naming it.
  virtual void guard(const std::string& what, const std::function<void()>& body) = 0;
  /// Where collectives take their tensors (the CPU for Gloo, this rank's GPU for NCCL).
  virtual torch::Device device() const = 0;
};

/// Makes the job's Backend from the launch (registered by <torchfit/distributed.hpp>).
using BackendFactory = std::function<std::unique_ptr<Backend>(const Launch&, const BackendOptions&)>;

namespace detail {

inline BackendFactory& backend_factory() {
  static BackendFactory factory;
  return factory;
}

}  // namespace detail

/// Makes `factory` the one that forms multi-process jobs; <torchfit/distributed.hpp> does this once through an
/// inline variable, as integration headers register their trackers.
inline bool register_backend(BackendFactory factory) {
  detail::backend_factory() = std::move(factory);
  return true;
}

}  // namespace torchfit::distributed
