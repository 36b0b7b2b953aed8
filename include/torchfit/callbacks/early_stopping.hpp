// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Options of EarlyStoppingCallback (Keras/Lightning names).
struct EarlyStoppingOptions {
  /// Metric to watch; empty: "eval_" + metric_for_best_model, or "eval_loss". An "eval_" prefix is added if missing.
  std::string monitor;
  /// "min", "max", or "auto": max when greater_is_better is set, else min for names ending in "loss", else max.
  std::string mode = "auto";
  /// An evaluation improves only when it beats the best value by more than this.
  double min_delta = 0.0;
  /// Evaluations in a row without improvement that stop training.
  int patience = 1;
  /// Stop when the metric is NaN or infinite.
  bool check_finite = true;
  /// Stop as soon as the metric is at least this good.
  std::optional<double> stopping_threshold;
  /// Stop as soon as the metric is this bad or worse.
  std::optional<double> divergence_threshold;
};

/// Stops training when the monitored metric stops improving (HF's EarlyStoppingCallback, done better: it keeps
/// its own best value, so it needs neither load_best_model_at_end nor checkpoints; min_delta, mode, thresholds and
/// a finiteness check; its counter and best value are saved in checkpoints; the stop reason is recorded so a
/// resumed run does not train on).
class EarlyStoppingCallback : public TrainerCallback {
 public:
  /// HF's constructor: early_stopping_patience and early_stopping_threshold (= min_delta).
  explicit EarlyStoppingCallback(int early_stopping_patience = 1, double early_stopping_threshold = 0.0)
      : EarlyStoppingCallback(EarlyStoppingOptions{"", "auto", early_stopping_threshold, early_stopping_patience,
                                                   true, std::nullopt, std::nullopt}) {}

  explicit EarlyStoppingCallback(EarlyStoppingOptions options) : options_(std::move(options)) {
    if (options_.patience < 1)
      throw ArgumentError(fmt::format("EarlyStoppingCallback: patience must be >= 1 (got {})", options_.patience));
    if (options_.mode != "min" && options_.mode != "max" && options_.mode != "auto")
      throw ArgumentError("EarlyStoppingCallback: mode must be \"min\", \"max\" or \"auto\" (got \"" + options_.mode +
                          "\")");
    if (!(options_.min_delta >= 0))
      throw ArgumentError(fmt::format("EarlyStoppingCallback: min_delta must be >= 0 (got {})", options_.min_delta));
  }

  void on_train_begin(const Args& args, TrainerState&, TrainerControl&, const CallbackContext&) override {
    if (args.eval_strategy == IntervalStrategy::no)
      throw ArgumentError(
          "EarlyStoppingCallback needs evaluations to watch: set --eval_strategy to \"steps\" or \"epoch\"");
    std::string metric = options_.monitor.empty() ? args.metric_for_best_model.value_or("loss") : options_.monitor;
    key_ = metric.rfind("eval_", 0) == 0 ? metric : "eval_" + metric;
    if (options_.mode != "auto")
      greater_ = options_.mode == "max";
    else if (options_.monitor.empty() && args.greater_is_better)
      greater_ = *args.greater_is_better;
    else
      greater_ = key_.size() < 4 || key_.compare(key_.size() - 4, 4, "loss") != 0;
  }

  void on_evaluate(const Args&, TrainerState&, TrainerControl& control, const CallbackContext& ctx) override {
    const Logs& metrics = *ctx.metrics;
    if (!metrics.contains(key_) || !metrics.at(key_).is_number()) {
      std::string available;
      for (const auto& item : metrics.items())
        if (item.value().is_number()) available += (available.empty() ? "" : ", ") + item.key();
      log::warning("EarlyStoppingCallback watches \"{}\" but this evaluation has no such number (it has: {}); "
                   "set metric_for_best_model or EarlyStoppingOptions::monitor to one of these",
                   key_, available);
      return;
    }
    const double value = metrics.at(key_).get<double>();
    const std::string shown = detail::python_float_repr(value);
    if (options_.check_finite && !std::isfinite(value))
      return control.stop_training("early stopping: " + key_ + " is " + shown);
    if (options_.stopping_threshold && better_or_equal(value, *options_.stopping_threshold))
      return control.stop_training("early stopping: " + key_ + " " + shown + " reached the stopping threshold " +
                                   detail::python_float_repr(*options_.stopping_threshold));
    if (options_.divergence_threshold && better_or_equal(*options_.divergence_threshold, value))
      return control.stop_training("early stopping: " + key_ + " " + shown + " crossed the divergence threshold " +
                                   detail::python_float_repr(*options_.divergence_threshold));
    const bool improved =
        !best_ || (greater_ ? value - *best_ > options_.min_delta : *best_ - value > options_.min_delta);
    if (improved) {
      best_ = value;
      counter_ = 0;
      return;
    }
    if (++counter_ >= options_.patience)
      control.stop_training(fmt::format("early stopping: {} did not improve by more than {} for {} evaluation{} "
                                        "(best {})",
                                        key_, detail::python_float_repr(options_.min_delta), counter_,
                                        counter_ == 1 ? "" : "s", detail::python_float_repr(*best_)));
  }

  /// HF's ExportableState form; best_value is an extra attribute (HF ignores it).
  json state() const override {
    return {{"args", {{"early_stopping_patience", options_.patience}, {"early_stopping_threshold", options_.min_delta}}},
            {"attributes",
             {{"early_stopping_patience_counter", counter_}, {"best_value", best_ ? json(*best_) : json(nullptr)}}}};
  }
  void load_state(const json& s) override {
    const json& a = s.at("attributes");
    counter_ = a.value("early_stopping_patience_counter", 0);
    best_ = a.contains("best_value") && a.at("best_value").is_number() ? std::optional<double>(a.at("best_value").get<double>())
                                                                        : std::nullopt;
  }

  int patience_counter() const { return counter_; }
  std::optional<double> best_value() const { return best_; }
  /// The metric watched, resolved at train begin.
  const std::string& monitor() const { return key_; }

 private:
  bool better_or_equal(double a, double b) const { return greater_ ? a >= b : a <= b; }

  EarlyStoppingOptions options_;
  std::string key_ = "eval_loss";
  bool greater_ = false;
  int counter_ = 0;
  std::optional<double> best_;
};

}  // namespace torchfit
