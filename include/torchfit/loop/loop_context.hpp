// SPDX-License-Identifier: MIT
#pragma once

#include <torch/torch.h>

#include "torchfit/callback_handler.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// What every part of the loop works with: the arguments, the state and control flags callbacks see, the
/// callbacks, and the device. The Trainer owns them; the loops refer to them.
struct LoopContext {
  const TrainingArguments& args;
  TrainerState& state;
  TrainerControl& control;
  CallbackHandler& handler;
  const torch::Device& device;
};

}  // namespace torchfit
