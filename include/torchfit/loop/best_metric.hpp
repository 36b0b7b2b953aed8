// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <string>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// HF's best-metric tracking (_determine_best_metric): which evaluation is the best so far, kept in the state.
struct BestMetric {
  /// The key of `--metric_for_best_model` in evaluation metrics (`eval_` added unless present).
  static std::string key(const TrainingArguments& args) {
    const std::string& m = *args.metric_for_best_model;
    return m.rfind("eval_", 0) == 0 ? m : "eval_" + m;
  }

  /// The tracked metric's value in `metrics`; an Error naming the flag and listing the metrics when absent.
  static double value(const TrainingArguments& args, const Logs& metrics, int64_t global_step) {
    const std::string k = key(args);
    if (!metrics.contains(k) || !metrics.at(k).is_number()) {
      std::string available;
      for (const auto& item : metrics.items()) available += (available.empty() ? "" : ", ") + item.key();
      throw Error(
          fmt::format("--metric_for_best_model \"{}\": the evaluation at step {} produced no numeric \"{}\" "
                      "(it produced: {}); return it from compute_metrics or pick one of these",
                      *args.metric_for_best_model, global_step, k, available));
    }
    return metrics.at(k).get<double>();
  }

  /// Records `metrics` in the state when they improve on the best (strictly, as HF); true if they did. With
  /// save_strategy "best" the best step is recorded too (HF PR #44583).
  static bool update(const TrainingArguments& args, TrainerState& state, const Logs& metrics) {
    if (!args.metric_for_best_model) return false;
    const double v = value(args, metrics, state.global_step);
    const bool greater = args.greater_is_better.value_or(true);
    if (!state.best_metric) state.best_metric = greater ? -INFINITY : INFINITY;
    const bool better = greater ? v > *state.best_metric : v < *state.best_metric;
    if (!better) return false;
    state.best_metric = v;
    if (args.save_strategy != SaveStrategy::no) state.best_global_step = state.global_step;
    return true;
  }
};

}  // namespace torchfit
