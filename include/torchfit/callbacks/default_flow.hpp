// SPDX-License-Identifier: MIT
#pragma once

#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Decides when to log, evaluate, save and stop from the logging/eval/save strategies (HF's DefaultFlowCallback).
/// Difference from HF v4.57: with logging_strategy "steps" the final step is always logged, and with eval_strategy
/// "steps" (past eval_delay) always evaluated (HF v5 does the evaluation half), so a run whose max_steps is not a
/// multiple of logging_steps/eval_steps still reports its end. Strategies "no" and "epoch" behave exactly as HF's.
class DefaultFlowCallback : public TrainerCallback {
 public:
  void on_step_end(const Args& args, TrainerState& state, TrainerControl& control,
                   const CallbackContext&) override {
    const int64_t step = state.global_step;
    if (step == 1 && args.logging_first_step) control.should_log = true;
    if (args.logging_strategy == IntervalStrategy::steps && step % state.logging_steps == 0)
      control.should_log = true;
    const bool eval_due = static_cast<double>(step) >= args.eval_delay;
    if (args.eval_strategy == IntervalStrategy::steps && step % state.eval_steps == 0 && eval_due)
      control.should_evaluate = true;
    if (args.save_strategy == SaveStrategy::steps && state.save_steps > 0 && step % state.save_steps == 0)
      control.should_save = true;

    if (step >= state.max_steps) {
      control.should_training_stop = true;
      if (args.logging_strategy == IntervalStrategy::steps) control.should_log = true;
      if (args.eval_strategy == IntervalStrategy::steps && eval_due) control.should_evaluate = true;
      if (args.save_strategy == SaveStrategy::steps) control.should_save = true;
    }
  }

  void on_epoch_end(const Args& args, TrainerState& state, TrainerControl& control,
                    const CallbackContext&) override {
    if (args.logging_strategy == IntervalStrategy::epoch) control.should_log = true;
    if (args.eval_strategy == IntervalStrategy::epoch && args.eval_delay <= state.epoch.value_or(0.0))
      control.should_evaluate = true;
    if (args.save_strategy == SaveStrategy::epoch) control.should_save = true;
  }
};

}  // namespace torchfit
