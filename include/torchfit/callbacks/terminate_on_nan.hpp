// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/detail/host_reads.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Stops training when the training loss becomes NaN or infinite (Keras's TerminateOnNaN; `--terminate_on_nan`
/// adds it after DefaultFlow). Each micro-batch's loss is checked on the device, without a sync; the result is
/// read at the next logging step, where the loss is read anyway. HF's logging_nan_inf_filter hides a
/// non-finite step loss from the logged mean, so the raw losses are what is watched. The stop is recorded in the
/// state (stop_reason, honoured on resume) and printed; the diverged model is neither evaluated nor saved at that
/// step.
class TerminateOnNanCallback : public TrainerCallback {
 public:
  void on_substep_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
    watch(ctx);
  }
  void on_step_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
    watch(ctx);
  }

  void on_log(const Args&, TrainerState& state, TrainerControl& control,
              const CallbackContext& ctx) override {
    const Logs& logs = *ctx.logs;
    if (!logs.contains("loss") || !all_finite_.defined()) return;  // not a training log
    const bool finite = detail::to_host(all_finite_) != 0;
    all_finite_.fill_(true);
    if (finite && std::isfinite(logs.at("loss").get<double>())) return;
    const std::string reason =
        fmt::format("the training loss became NaN or infinite before step {}", state.global_step);
    log::warning("TerminateOnNanCallback: stopping training: {}", reason);
    control.stop_training(reason);
    control.should_evaluate = false;
    control.should_save = false;
  }

 private:
  void watch(const CallbackContext& ctx) {
    if (!ctx.loss) return;
    const torch::Tensor finite = torch::isfinite(*ctx.loss).all();
    if (all_finite_.defined())
      all_finite_.logical_and_(finite);
    else
      all_finite_ = finite.clone();
  }

  torch::Tensor all_finite_;  // every micro-batch loss since the last log was finite (on the loss's device)
};

}  // namespace torchfit
