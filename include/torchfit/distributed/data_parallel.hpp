// SPDX-License-Identifier: MIT
// What DistributedDataParallel adds to the training loop.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/distributed/backend.hpp"
#include "torchfit/distributed/world.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit::distributed {

/// DistributedDataParallel's part of a training run: every rank starts from rank 0's parameters and buffers,
/// takes rank 0's buffers before each forward (--ddp_broadcast_buffers), and the backward of each update's last
/// micro-batch averages the gradients over the ranks, bucketed and overlapped with the backward pass (the other
/// micro-batches accumulate locally: HF's no_sync). Does nothing in a process alone.
class DataParallel {
 public:
  /// Starts a training run of `module`, whose trainable parameters are `parameters`.
  void start(torch::nn::Module& module, const std::vector<torch::Tensor>& parameters,
             const TrainingArguments& args) {
    Backend* b = backend();
    if (b == nullptr) return;
    buffers_ = module.buffers();
    std::vector<torch::Tensor> state = module.parameters();
    state.insert(state.end(), buffers_.begin(), buffers_.end());
    {
      torch::NoGradGuard no_grad;
      b->broadcast(state, "copying rank 0's parameters and buffers to every rank");
    }
    broadcast_buffers_ = args.ddp_broadcast_buffers.value_or(true) && !buffers_.empty();
    std::vector<std::string> names;
    for (const torch::Tensor& p : parameters) names.push_back(name_of(module, p));
    // HF: find_unused_parameters defaults to true for models other than its own PreTrainedModel.
    reducer_ = b->make_reducer(parameters, std::move(names),
                               ReducerOptions{static_cast<double>(args.ddp_bucket_cap_mb.value_or(25)),
                                              args.ddp_find_unused_parameters.value_or(true)});
  }

  /// Before a micro-batch's forward pass.
  void before_forward() {
    if (!broadcast_buffers_) return;
    torch::NoGradGuard no_grad;
    backend()->broadcast(buffers_, "copying rank 0's buffers to every rank");
  }

  /// Runs `backward()`, the backward pass of `loss`; with `sync` (the last micro-batch of an update) it averages
  /// the gradients over the ranks.
  template <typename Backward>
  void backward(const torch::Tensor& loss, bool sync, Backward&& backward) {
    if (!reducer_) return backward();
    if (sync) reducer_->prepare_for_backward(loss);
    backend()->guard(sync ? "the gradient all-reduce" : "a backward pass", backward);
  }

 private:
  static std::string name_of(const torch::nn::Module& module, const torch::Tensor& parameter) {
    for (const auto& named : module.named_parameters())
      if (named.value().is_same(parameter)) return named.key();
    return "?";
  }

  std::unique_ptr<GradientReducer> reducer_;
  std::vector<torch::Tensor> buffers_;
  bool broadcast_buffers_ = false;
};

}  // namespace torchfit::distributed
