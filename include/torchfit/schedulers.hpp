// SPDX-License-Identifier: MIT
// Learning-rate schedules with Hugging Face's names and formulas (transformers/optimization.py), stepped once
// per optimizer update.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "torchfit/detail/state_fields.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit {

/// Base of every schedule: owns the step counter and the base learning rate of each parameter group, and writes
/// the scheduled rates into the optimizer. Like torch's LRScheduler, construction applies step 0's rates.
class LRScheduler {
 public:
  explicit LRScheduler(torch::optim::Optimizer& optimizer) : optimizer_(optimizer) {
    for (auto& group : optimizer_.param_groups()) base_lrs_.push_back(group.options().get_lr());
  }
  virtual ~LRScheduler() = default;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// Advances one update and applies the new rates.
  virtual void step() {
    ++last_step_;
    apply();
  }

  /// The rate of each parameter group, as last applied (HF logs the first one).
  std::vector<double> get_last_lr() const {
    std::vector<double> lrs;
    for (const auto& group : optimizer_.param_groups()) lrs.push_back(group.options().get_lr());
    return lrs;
  }

  int64_t last_step() const { return last_step_; }
  const std::vector<double>& base_lrs() const { return base_lrs_; }

  /// What a checkpoint stores; load_state() restores it and re-applies the rates.
  virtual json state() const { return {{"last_step", last_step_}, {"base_lrs", base_lrs_}}; }
  /// All or nothing: a state with a missing or mistyped member, or rates for another number of parameter groups,
  /// throws CheckpointError naming what is wrong and changes nothing.
  virtual void load_state(const json& s) {
    const SavedState saved = parse_state(s);
    last_step_ = saved.last_step;
    base_lrs_ = saved.base_lrs;
    apply();
  }

 protected:
  struct SavedState {
    int64_t last_step;
    std::vector<double> base_lrs;
  };

  /// The members of state() that every schedule has, checked.
  SavedState parse_state(const json& s) const {
    SavedState saved{detail::integer_member(s, state_name, "last_step"),
                     detail::numbers_member(s, state_name, "base_lrs")};
    check_group_count(saved.base_lrs, "base_lrs");
    return saved;
  }

  /// A per-group list of rates must have one rate per parameter group.
  void check_group_count(const std::vector<double>& rates, const char* key) const {
    if (rates.size() != optimizer_.param_groups().size())
      throw CheckpointError(
          fmt::format("{}: \"{}\" has {} learning rates but the optimizer has {} parameter groups",
                      state_name, key, rates.size(), optimizer_.param_groups().size()));
  }

  static constexpr const char* state_name = "scheduler state";

  /// The rate of parameter group `group` at update `step`.
  virtual double lr_at(std::size_t group, int64_t step) const = 0;

  void apply() {
    auto& groups = optimizer_.param_groups();
    for (std::size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(lr_at(i, last_step_));
  }

  torch::optim::Optimizer& optimizer_;
  std::vector<double> base_lrs_;
  int64_t last_step_ = 0;
};

/// base_lr * multiplier(step) for every group (torch's LambdaLR; all of HF's schedules but the plateau one).
class LambdaLR : public LRScheduler {
 public:
  LambdaLR(torch::optim::Optimizer& optimizer, std::function<double(int64_t)> multiplier)
      : LRScheduler(optimizer), multiplier_(std::move(multiplier)) {
    apply();
  }

 protected:
  double lr_at(std::size_t group, int64_t step) const override {
    return base_lrs_[group] * multiplier_(step);
  }

 private:
  std::function<double(int64_t)> multiplier_;
};

/// torch's ReduceLROnPlateau: multiplies the rates by `factor` after `patience` evaluations without improvement.
/// The Trainer calls step(metric) after each evaluation; the per-update step() does nothing.
class ReduceLROnPlateau : public LRScheduler {
 public:
  struct Options {
    std::string mode = "min";
    double factor = 0.1;
    int64_t patience = 10;
    double threshold = 1e-4;
    std::string threshold_mode = "rel";
    int64_t cooldown = 0;
    double min_lr = 0;
    double eps = 1e-8;
  };

  ReduceLROnPlateau(torch::optim::Optimizer& optimizer, Options options)
      : LRScheduler(optimizer), options_(std::move(options)) {
    if (options_.mode != "min" && options_.mode != "max")
      throw ArgumentError(
          fmt::format("--lr_scheduler_kwargs: mode must be \"min\" or \"max\" (got \"{}\")", options_.mode));
    if (options_.threshold_mode != "rel" && options_.threshold_mode != "abs")
      throw ArgumentError(
          fmt::format("--lr_scheduler_kwargs: threshold_mode must be \"rel\" or \"abs\" (got \"{}\")",
                      options_.threshold_mode));
    if (options_.factor >= 1.0) throw ArgumentError("--lr_scheduler_kwargs: factor must be < 1.0");
    current_ = base_lrs_;
    best_ = worst();
  }

  void step() override {}

  /// One evaluation's metric.
  void step(double metric) {
    ++last_step_;
    if (is_better(metric)) {
      best_ = metric;
      bad_ = 0;
    } else {
      ++bad_;
    }
    if (cooldown_counter_ > 0) {
      --cooldown_counter_;
      bad_ = 0;
    }
    if (bad_ > options_.patience) {
      for (auto& lr : current_) {
        const double reduced = std::max(lr * options_.factor, options_.min_lr);
        if (lr - reduced > options_.eps) lr = reduced;
      }
      cooldown_counter_ = options_.cooldown;
      bad_ = 0;
    }
    apply();
  }

  json state() const override {
    json s = LRScheduler::state();
    s["current_lrs"] = current_;
    s["best"] = best_;
    s["num_bad_epochs"] = bad_;
    s["cooldown_counter"] = cooldown_counter_;
    return s;
  }
  void load_state(const json& s) override {
    const SavedState saved = parse_state(s);
    std::vector<double> current = detail::numbers_member(s, state_name, "current_lrs");
    check_group_count(current, "current_lrs");
    const double best = detail::number_member(s, state_name, "best");
    const int64_t bad = detail::integer_member(s, state_name, "num_bad_epochs");
    const int64_t cooldown = detail::integer_member(s, state_name, "cooldown_counter");
    last_step_ = saved.last_step;
    base_lrs_ = saved.base_lrs;
    current_ = std::move(current);
    best_ = best;
    bad_ = bad;
    cooldown_counter_ = cooldown;
    apply();
  }

 protected:
  double lr_at(std::size_t group, int64_t) const override { return current_[group]; }

 private:
  double worst() const {
    return options_.mode == "min" ? std::numeric_limits<double>::infinity()
                                  : -std::numeric_limits<double>::infinity();
  }
  bool is_better(double a) const {
    const bool rel = options_.threshold_mode == "rel";
    if (options_.mode == "min")
      return a < (rel ? best_ * (1.0 - options_.threshold) : best_ - options_.threshold);
    return a > (rel ? best_ * (1.0 + options_.threshold) : best_ + options_.threshold);
  }

  Options options_;
  std::vector<double> current_;
  double best_ = 0;
  int64_t bad_ = 0;
  int64_t cooldown_counter_ = 0;
};

/// HF: warmup_steps if > 0, else ceil(max_steps * warmup_ratio).
inline int64_t num_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t max_steps) {
  return warmup_steps > 0 ? warmup_steps
                          : static_cast<int64_t>(std::ceil(static_cast<double>(max_steps) * warmup_ratio));
}

namespace detail {

// Reads lr_scheduler_kwargs for one schedule: unknown keys and wrong types are errors naming the flag.
class SchedulerKwargs {
 public:
  SchedulerKwargs(const std::string& schedule, const json& kwargs, std::set<std::string> accepted)
      : schedule_(schedule), kwargs_(kwargs.is_null() ? json::object() : kwargs) {
    if (!kwargs_.is_object())
      throw ArgumentError(
          fmt::format("--lr_scheduler_kwargs must be a JSON object (got {})", kwargs_.dump()));
    for (const auto& item : kwargs_.items())
      if (!accepted.count(item.key())) {
        throw ArgumentError(fmt::format(
            "--lr_scheduler_kwargs: unknown key \"{}\" for --lr_scheduler_type {} "
            "(accepted: {})",
            item.key(), schedule_, accepted.empty() ? "none" : fmt::format("{}", fmt::join(accepted, ", "))));
      }
  }

  bool has(const std::string& key) const { return kwargs_.contains(key) && !kwargs_.at(key).is_null(); }

  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    if (!kwargs_.at(key).is_number()) throw wrong(key, "a number");
    return kwargs_.at(key).get<double>();
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = kwargs_.at(key);
    if (!v.is_number_integer() && !(v.is_number() && v.get<double>() == std::floor(v.get<double>())))
      throw wrong(key, "an integer");
    return static_cast<int64_t>(v.get<double>());
  }
  std::string text(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!kwargs_.at(key).is_string()) throw wrong(key, "a string");
    return kwargs_.at(key).get<std::string>();
  }

 private:
  ArgumentError wrong(const std::string& key, const std::string& expected) const {
    return ArgumentError(
        fmt::format("--lr_scheduler_kwargs: \"{}\" must be {} for --lr_scheduler_type {} (got {})", key,
                    expected, schedule_, kwargs_.at(key).dump()));
  }

  std::string schedule_;
  json kwargs_;
};

inline double warmup_fraction(int64_t step, int64_t warmup) {
  return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
}
inline double progress_after_warmup(int64_t step, int64_t warmup, int64_t total) {
  return static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
}

}  // namespace detail

/// The schedule `name` (HF's lr_scheduler_type) for `num_training_steps` updates with `num_warmup_steps` of
/// warmup; `kwargs` are HF's lr_scheduler_kwargs for that schedule.
inline std::unique_ptr<LRScheduler> get_scheduler(const std::string& name, torch::optim::Optimizer& optimizer,
                                                  int64_t num_warmup_steps, int64_t num_training_steps,
                                                  const json& kwargs = json::object()) {
  using detail::progress_after_warmup;
  using detail::warmup_fraction;
  const int64_t W = num_warmup_steps, T = num_training_steps;
  constexpr double pi = 3.14159265358979323846;
  const auto lambda = [&](std::function<double(int64_t)> f) {
    return std::make_unique<LambdaLR>(optimizer, std::move(f));
  };

  if (name == "linear") {
    detail::SchedulerKwargs k(name, kwargs, {});
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      return std::max(0.0, static_cast<double>(T - s) / static_cast<double>(std::max<int64_t>(1, T - W)));
    });
  }
  if (name == "cosine") {
    const double cycles = detail::SchedulerKwargs(name, kwargs, {"num_cycles"}).number("num_cycles", 0.5);
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      return std::max(0.0, 0.5 * (1.0 + std::cos(pi * cycles * 2.0 * progress_after_warmup(s, W, T))));
    });
  }
  if (name == "cosine_with_restarts") {
    const double cycles = detail::SchedulerKwargs(name, kwargs, {"num_cycles"}).number("num_cycles", 1.0);
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      const double p = progress_after_warmup(s, W, T);
      if (p >= 1.0) return 0.0;
      return std::max(0.0, 0.5 * (1.0 + std::cos(pi * std::fmod(cycles * p, 1.0))));
    });
  }
  if (name == "polynomial") {
    detail::SchedulerKwargs k(name, kwargs, {"lr_end", "power"});
    const double lr_end = k.number("lr_end", 1e-7), power = k.number("power", 1.0);
    const double lr_init = optimizer.defaults().get_lr();
    if (!(lr_init > lr_end))
      throw ArgumentError(
          fmt::format("--lr_scheduler_kwargs: lr_end ({}) must be smaller than the initial learning "
                      "rate ({})",
                      lr_end, lr_init));
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      if (s > T) return lr_end / lr_init;
      const double remaining = 1.0 - static_cast<double>(s - W) / static_cast<double>(T - W);
      return ((lr_init - lr_end) * std::pow(remaining, power) + lr_end) / lr_init;
    });
  }
  if (name == "constant") {
    detail::SchedulerKwargs k(name, kwargs, {});
    return lambda([](int64_t) { return 1.0; });
  }
  if (name == "constant_with_warmup") {
    detail::SchedulerKwargs k(name, kwargs, {});
    return lambda([=](int64_t s) { return s < W ? warmup_fraction(s, W) : 1.0; });
  }
  if (name == "inverse_sqrt") {
    const int64_t timescale =
        detail::SchedulerKwargs(name, kwargs, {"timescale"}).integer("timescale", W > 0 ? W : 10000);
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      const double shift = static_cast<double>(timescale - W);
      return 1.0 / std::sqrt((static_cast<double>(s) + shift) / static_cast<double>(timescale));
    });
  }
  if (name == "cosine_with_min_lr") {
    detail::SchedulerKwargs k(name, kwargs, {"num_cycles", "min_lr", "min_lr_rate"});
    if (k.has("min_lr") == k.has("min_lr_rate"))
      throw ArgumentError(
          "--lr_scheduler_kwargs: --lr_scheduler_type cosine_with_min_lr needs exactly one of "
          "min_lr and min_lr_rate");
    const double cycles = k.number("num_cycles", 0.5);
    const double rate = k.has("min_lr_rate") ? k.number("min_lr_rate", 0)
                                             : k.number("min_lr", 0) / optimizer.defaults().get_lr();
    return lambda([=](int64_t s) {
      if (s < W) return warmup_fraction(s, W);
      const double f = 0.5 * (1.0 + std::cos(pi * cycles * 2.0 * progress_after_warmup(s, W, T)));
      return std::max(0.0, f * (1.0 - rate) + rate);
    });
  }
  if (name == "warmup_stable_decay") {
    detail::SchedulerKwargs k(
        name, kwargs,
        {"num_stable_steps", "num_decay_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"});
    if (!k.has("num_decay_steps"))
      throw ArgumentError(
          "--lr_scheduler_kwargs: --lr_scheduler_type warmup_stable_decay needs num_decay_steps");
    const int64_t decay = k.integer("num_decay_steps", 0);
    const int64_t stable = k.integer("num_stable_steps", T - W - decay);
    const std::string warmup_type = k.text("warmup_type", "linear"),
                      decay_type = k.text("decay_type", "cosine");
    for (const auto& [key, value] :
         {std::pair{"warmup_type", warmup_type}, std::pair{"decay_type", decay_type}})
      if (value != "linear" && value != "cosine" && value != "1-sqrt")
        throw ArgumentError(fmt::format(
            "--lr_scheduler_kwargs: {} must be linear, cosine or 1-sqrt (got \"{}\")", key, value));
    const double min_ratio = k.number("min_lr_ratio", 0.0), cycles = k.number("num_cycles", 0.5);
    return lambda([=](int64_t s) {
      const auto scaled = [&](double f) { return std::max(0.0, f * (1.0 - min_ratio) + min_ratio); };
      if (s < W) {
        const double p = warmup_fraction(s, W);
        if (warmup_type == "linear") return scaled(p);
        if (warmup_type == "cosine") return scaled(0.5 * (1.0 - std::cos(pi * p)));
        return scaled(1.0 - std::sqrt(1.0 - p));
      }
      if (s < W + stable) return 1.0;
      if (s < W + stable + decay) {
        const double p =
            static_cast<double>(s - W - stable) / static_cast<double>(std::max<int64_t>(1, decay));
        if (decay_type == "linear") return scaled(1.0 - p);
        if (decay_type == "cosine") return scaled(0.5 * (1.0 + std::cos(pi * 2.0 * cycles * p)));
        return scaled(1.0 - std::sqrt(p));
      }
      return min_ratio;
    });
  }
  if (name == "reduce_lr_on_plateau") {
    detail::SchedulerKwargs k(
        name, kwargs,
        {"mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps"});
    ReduceLROnPlateau::Options o;
    o.mode = k.text("mode", o.mode);
    o.factor = k.number("factor", o.factor);
    o.patience = k.integer("patience", o.patience);
    o.threshold = k.number("threshold", o.threshold);
    o.threshold_mode = k.text("threshold_mode", o.threshold_mode);
    o.cooldown = k.integer("cooldown", o.cooldown);
    o.min_lr = k.number("min_lr", o.min_lr);
    o.eps = k.number("eps", o.eps);
    return std::make_unique<ReduceLROnPlateau>(optimizer, o);
  }
  throw ArgumentError(
      fmt::format("--lr_scheduler_type: \"{}\" is not a schedule; use linear, cosine, "
                  "cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt, "
                  "reduce_lr_on_plateau, cosine_with_min_lr or warmup_stable_decay",
                  name));
}

}  // namespace torchfit
