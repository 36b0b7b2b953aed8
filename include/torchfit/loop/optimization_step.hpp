// SPDX-License-Identifier: MIT
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/callback_handler.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/optimizers.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// One optimizer update, once its micro-batches are back-propagated (Lightning's optimization loop): unscale the
/// fp16 gradients, clip, step the optimizer, step the scheduler unless fp16 skipped the update, zero the
/// gradients, with HF's on_pre_optimizer_step and on_optimizer_step in between.
class OptimizationStep {
 public:
  OptimizationStep(torch::optim::Optimizer& optimizer, LRScheduler& scheduler, detail::GradScaler* scaler,
                   std::vector<torch::Tensor> parameters, double max_grad_norm)
      : optimizer_(optimizer),
        scheduler_(scheduler),
        scaler_(scaler),
        parameters_(std::move(parameters)),
        max_grad_norm_(max_grad_norm) {}

  /// Back-propagates a micro-batch's loss (scaled first under fp16).
  void backward(const torch::Tensor& loss) const { (scaler_ ? scaler_->scale(loss) : loss).backward(); }

  /// Takes the update from the accumulated gradients.
  void run(CallbackHandler& handler, const TrainingArguments& args, TrainerState& state,
           TrainerControl& control) {
    if (scaler_) scaler_->unscale(parameters_);
    if (max_grad_norm_ > 0) grad_norm_ = clip_grad_norm(parameters_, max_grad_norm_);
    handler.on_pre_optimizer_step(args, state, control);
    const bool stepped = scaler_ ? scaler_->step(optimizer_) : (optimizer_.step(), true);
    handler.on_optimizer_step(args, state, control);
    learning_rate_ =
        scheduler_.get_last_lr().at(0);  // the rate this update used (HF reads it before stepping)
    if (stepped) scheduler_.step();
    optimizer_.zero_grad();
  }

  /// Pre-clip gradient norm of the last update, on the device; undefined without clipping.
  const torch::Tensor& grad_norm() const { return grad_norm_; }
  /// Learning rate of the last update.
  double learning_rate() const { return learning_rate_; }

 private:
  torch::optim::Optimizer& optimizer_;
  LRScheduler& scheduler_;
  detail::GradScaler* scaler_;
  std::vector<torch::Tensor> parameters_;
  double max_grad_norm_;
  torch::Tensor grad_norm_;
  double learning_rate_ = 0;
};

}  // namespace torchfit
