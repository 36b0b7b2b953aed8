// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "torchfit/detail/metric_direction.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Options of EarlyStoppingCallback (Keras/Lightning names).
struct EarlyStoppingOptions {
  /// Metric to watch; empty: "eval_" + metric_for_best_model, or "eval_loss". An "eval_" prefix is added if
  /// missing.
  std::string monitor;
  /// "min", "max", or "auto": max when greater_is_better is set, else min for names ending in "loss", else
  /// max.
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

/// Stops training when the monitored metric stops improving (HF's EarlyStoppingCallback, done better: it
/// keeps its own best value, so it needs neither load_best_model_at_end nor checkpoints; min_delta, mode,
/// thresholds and a finiteness check; its counter and best value are saved in checkpoints; the stop reason is
/// recorded so a resumed run does not train on).
class EarlyStoppingCallback : public TrainerCallback {
 public:
  /// HF's constructor: early_stopping_patience and early_stopping_threshold (= min_delta).
  explicit EarlyStoppingCallback(int early_stopping_patience = 1, double early_stopping_threshold = 0.0)
      : EarlyStoppingCallback(EarlyStoppingOptions{"", "auto", early_stopping_threshold,
                                                   early_stopping_patience, true, std::nullopt,
                                                   std::nullopt}) {}

  /// All options; throws ArgumentError for a patience below 1, an unknown mode or a negative min_delta.
  explicit EarlyStoppingCallback(EarlyStoppingOptions options) : options_(std::move(options)) {
    if (options_.patience < 1)
      throw ArgumentError(
          fmt::format("EarlyStoppingCallback: patience must be >= 1 (got {})", options_.patience));
    if (options_.mode != "min" && options_.mode != "max" && options_.mode != "auto")
      throw ArgumentError("EarlyStoppingCallback: mode must be \"min\", \"max\" or \"auto\" (got \"" +
                          options_.mode + "\")");
    if (!(options_.min_delta >= 0))
      throw ArgumentError(
          fmt::format("EarlyStoppingCallback: min_delta must be >= 0 (got {})", options_.min_delta));
  }

  /// Resolves the metric and direction; throws ArgumentError when no evaluation is scheduled.
  void on_train_begin(const Args& args, TrainerState&, TrainerControl&, const CallbackContext&) override {
    if (args.eval_strategy == IntervalStrategy::no)
      throw ArgumentError(
          "EarlyStoppingCallback needs evaluations to watch: set --eval_strategy to \"steps\" or \"epoch\" "
          "(got "
          "\"no\")");
    key_ =
        eval_key(options_.monitor.empty() ? args.metric_for_best_model.value_or("loss") : options_.monitor);
    warned_missing_ = false;
    stop_reason_.clear();
    if (options_.mode != "auto")
      greater_ = options_.mode == "max";
    else if (args.greater_is_better && args.metric_for_best_model &&
             eval_key(*args.metric_for_best_model) == key_)
      greater_ = *args.greater_is_better;
    else {
      greater_ = !detail::ends_with(key_, "loss");
      if (greater_) detail::warn_if_error_measure(key_, "EarlyStoppingOptions::mode to \"min\"", "\"max\"");
    }
  }

  /// Checks one evaluation's metric and stops training (with a reason, printed as a notice) when it says so.
  void on_evaluate(const Args&, TrainerState& state, TrainerControl& control,
                   const CallbackContext& ctx) override {
    const Logs& metrics = *ctx.metrics;
    const std::string* prefix = ctx.metric_key_prefix;
    if (prefix && key_.rfind(*prefix + "_", 0) != 0) return;  // another eval dataset's evaluation
    if (!metrics.contains(key_) || !metrics.at(key_).is_number()) {
      if (!warned_missing_) warn_missing(metrics);
      return;
    }
    const double value = metrics.at(key_).get<double>();
    const std::string shown = detail::python_float_repr(value);
    if (options_.check_finite && !std::isfinite(value))
      return stop(state, control, "early stopping: " + key_ + " is " + shown);
    if (options_.stopping_threshold && better_or_equal(value, *options_.stopping_threshold))
      return stop(state, control,
                  "early stopping: " + key_ + " " + shown + " reached the stopping threshold " +
                      detail::python_float_repr(*options_.stopping_threshold));
    if (options_.divergence_threshold && better_or_equal(*options_.divergence_threshold, value))
      return stop(state, control,
                  "early stopping: " + key_ + " " + shown + " crossed the divergence threshold " +
                      detail::python_float_repr(*options_.divergence_threshold));
    // A NaN (check_finite off) is never an improvement, so it cannot become the best value.
    const bool improved =
        !std::isnan(value) &&
        (!best_ || (greater_ ? value - *best_ > options_.min_delta : *best_ - value > options_.min_delta));
    if (improved) {
      best_ = value;
      counter_ = 0;
      return;
    }
    if (++counter_ >= options_.patience)
      stop(state, control,
           fmt::format("early stopping: {} did not improve by more than {} for {} evaluation{} (best {})",
                       key_, detail::python_float_repr(options_.min_delta), counter_,
                       counter_ == 1 ? "" : "s", best_ ? detail::python_float_repr(*best_) : "none"));
  }

  /// HF's ExportableState form; best_value is an extra attribute (HF ignores it).
  json state() const override {
    return {
        {"args",
         {{"early_stopping_patience", options_.patience}, {"early_stopping_threshold", options_.min_delta}}},
        {"attributes",
         {{"early_stopping_patience_counter", counter_},
          {"best_value", best_ ? json(*best_) : json(nullptr)}}}};
  }
  /// Restores the counter and best value from state() or from an HF checkpoint (which has no best value).
  void load_state(const json& s) override {
    const json a = s.is_object() ? s.value("attributes", json::object()) : json::object();
    counter_ = a.value("early_stopping_patience_counter", 0);
    const json best = a.value("best_value", json(nullptr));
    best_ = best.is_number() ? std::optional<double>(best.get<double>()) : std::nullopt;
  }

  /// Evaluations in a row without improvement so far.
  int patience_counter() const { return counter_; }
  /// Best value of the metric seen so far; empty before the first evaluation.
  std::optional<double> best_value() const { return best_; }
  /// The metric watched, resolved at train begin.
  const std::string& monitor() const { return key_; }
  /// Why this callback stopped training; empty while it has not.
  const std::string& stop_reason() const { return stop_reason_; }

 private:
  static std::string eval_key(const std::string& metric) {
    return metric.rfind("eval_", 0) == 0 ? metric : "eval_" + metric;
  }

  bool better_or_equal(double a, double b) const { return greater_ ? a >= b : a <= b; }

  void stop(const TrainerState& state, TrainerControl& control, std::string reason) {
    log::notice("{}; training stops at step {}", reason, state.global_step);
    stop_reason_ = reason;
    control.stop_training(std::move(reason));
  }

  // Once per run: the same evaluation keys come back every time, so repeating it would only add noise.
  void warn_missing(const Logs& metrics) {
    std::string available;
    for (const auto& item : metrics.items())
      if (item.value().is_number()) available += (available.empty() ? "" : ", ") + item.key();
    log::warning(
        "EarlyStoppingCallback watches \"{}\" but the evaluation has no such number (it has: {}); set "
        "metric_for_best_model or EarlyStoppingOptions::monitor to one of these. Early stopping does "
        "nothing until the metric appears",
        key_, available.empty() ? "none" : available);
    warned_missing_ = true;
  }

  EarlyStoppingOptions options_;
  std::string key_ = "eval_loss";
  bool greater_ = false;
  int counter_ = 0;
  std::optional<double> best_;
  std::string stop_reason_;
  bool warned_missing_ = false;
};

}  // namespace torchfit
