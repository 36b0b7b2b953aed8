// SPDX-License-Identifier: MIT
// What a loss function may return, and what the Trainer's train(), predict() and compute_metrics exchange.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "torchfit/json.hpp"

namespace torchfit {

/// What a loss function returns when evaluation should also see predictions (for compute_metrics). A loss
/// function may return a plain scalar tensor instead.
struct LossOutput {
  torch::Tensor loss;
  torch::Tensor predictions;  // e.g. logits; gathered over the evaluation set when compute_metrics is set
  torch::Tensor labels;       // defaults to the batch's target
};

/// Predictions and labels of a whole evaluation set, on the host, concatenated along dimension 0; batches whose
/// dimension 1 differs are padded with -100 to the longest (HF's EvalPrediction and nested_concat).
struct EvalPrediction {
  torch::Tensor predictions;
  torch::Tensor label_ids;
};

/// Result of train() (HF's TrainOutput).
struct TrainOutput {
  int64_t global_step = 0;
  double training_loss = 0;
  Logs metrics;
};

/// Result of predict() (HF's PredictionOutput).
struct PredictionOutput {
  torch::Tensor predictions;
  torch::Tensor label_ids;
  Logs metrics;
};

}  // namespace torchfit
