// SPDX-License-Identifier: MIT
// The experiment-tracker framework: a base class with failure isolation, and the registry that makes a tracker
// available to `report_to` as soon as its header is included.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torchfit/callback_handler.hpp"
#include "torchfit/error.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Base of experiment trackers. An exception thrown from any of its events is reported once as a warning naming
/// the tracker and the cause, and the tracker is disabled; training goes on. Trackers act only on the world
/// process zero (check `state.is_world_process_zero`).
class TrackerCallback : public TrainerCallback {
 public:
  bool isolate_failures() const override { return true; }
};

/// A tracker that opens its run once, at on_train_begin or, when logging starts without training (a lone
/// evaluate()), at the first on_log: HF's `_initialized` / `setup()` pattern.
class LazyTrackerCallback : public TrackerCallback {
 public:
  void on_train_begin(const Args& args, TrainerState& state, TrainerControl&,
                      const CallbackContext& ctx) override {
    ready(args, state, ctx);
  }

 protected:
  /// Sets up on first use; false on processes other than the world process zero, which do not track.
  bool ready(const Args& args, const TrainerState& state, const CallbackContext& ctx) {
    if (!state.is_world_process_zero) return false;
    if (!initialized_) {
      initialized_ = true;
      setup(args, state, ctx);
    }
    return true;
  }
  /// Whether setup() ran (the run is open).
  bool initialized() const { return initialized_; }
  virtual void setup(const Args& args, const TrainerState& state, const CallbackContext& ctx) = 0;

 private:
  bool initialized_ = false;
};

namespace integrations {

/// A tracker that report_to can name.
struct Integration {
  std::string name;
  int order;  // position in report_to="all" (HF's fixed order)
  std::function<void(CallbackHandler&)> add;
};

inline std::vector<Integration>& registry() {
  static std::vector<Integration> integrations;
  return integrations;
}

/// Registers T under `name`; each integration header does this once through an inline variable.
template <typename T>
bool register_integration(std::string name, int order) {
  auto& r = registry();
  if (std::none_of(r.begin(), r.end(), [&](const Integration& i) { return i.name == name; }))
    r.push_back({std::move(name), order, [](CallbackHandler& handler) { handler.add_callback<T>(); }});
  std::stable_sort(r.begin(), r.end(), [](const Integration& a, const Integration& b) { return a.order < b.order; });
  return true;
}

/// Names of the integrations compiled into this program, in report_to="all" order.
inline std::vector<std::string> available() {
  std::vector<std::string> names;
  for (const auto& i : registry()) names.push_back(i.name);
  return names;
}

/// The header that makes the tracker `name` available (`comet_ml` is in comet.hpp); nothing for a name
/// torchfit has no tracker for.
inline std::optional<std::string> integration_header(std::string_view name) {
  if (name == "comet_ml") return std::string("<torchfit/integrations/comet.hpp>");
  for (const char* own :
       {"clearml", "codecarbon", "csv", "dvclive", "jsonl", "mlflow", "tensorboard", "trackio", "wandb"})
    if (name == own) return "<torchfit/integrations/" + std::string(name) + ".hpp>";
  return std::nullopt;
}

/// The integrations `report_to` selects, in the order given ("all" = every available one, "none" = none).
/// A name that is not available is an ArgumentError saying why (the header to include, a tracker torchfit
/// lacks, or no tracker at all) and listing what is available.
inline std::vector<const Integration*> resolve(const std::vector<std::string>& report_to) {
  std::vector<const Integration*> selected;
  const auto& r = registry();
  if (report_to.empty() || (report_to.size() == 1 && report_to[0] == "none")) return selected;
  if (report_to.size() == 1 && report_to[0] == "all") {
    for (const auto& i : r) selected.push_back(&i);
    return selected;
  }
  for (const auto& name : report_to) {
    auto it = std::find_if(r.begin(), r.end(), [&](const Integration& i) { return i.name == name; });
    if (it == r.end()) {
      std::string names;
      for (const auto& i : r) names += (names.empty() ? "" : ", ") + i.name;
      const std::string available = "available: " + (names.empty() ? std::string("none") : names);
      if (const auto header = integration_header(name))
        throw ArgumentError("--report_to: \"" + name + "\" is not available; include " + *header +
                            " to make it available (" + available + ")");
      if (name == "neptune")
        throw ArgumentError("--report_to: \"neptune\": Neptune's hosted service shut down on 2026-03-05; " +
                            available);
      for (const char* hf : {"azure_ml", "dagshub", "flyte", "kubeflow", "swanlab"})
        if (name == hf)
          throw ArgumentError("--report_to: \"" + name +
                              "\" is a Hugging Face integration torchfit does not have; " + available);
      throw ArgumentError("--report_to: \"" + name + "\" is not a tracker; " + available +
                          " (\"all\", \"none\")");
    }
    if (std::find(selected.begin(), selected.end(), &*it) == selected.end()) selected.push_back(&*it);
  }
  return selected;
}

/// Adds the callbacks of the integrations `report_to` selects.
inline void add_reporting_callbacks(CallbackHandler& handler, const std::vector<std::string>& report_to) {
  for (const Integration* i : resolve(report_to)) i->add(handler);
}

/// The number of parameters of the model in `ctx` (HF's `model/num_parameters`); nothing without a model.
inline std::optional<std::int64_t> model_num_parameters(const CallbackContext& ctx) {
  if (!ctx.model) return std::nullopt;
  std::int64_t count = 0;
  for (const auto& p : ctx.model->parameters()) count += p.numel();
  return count;
}

/// HF's rewrite_logs: `eval_x` -> `eval/x`, `test_x` -> `test/x`, anything else -> `train/<key>`.
inline std::string rewrite_log_key(std::string_view key) {
  if (key.substr(0, 5) == "eval_") return "eval/" + std::string(key.substr(5));
  if (key.substr(0, 5) == "test_") return "test/" + std::string(key.substr(5));
  return "train/" + std::string(key);
}

/// The end-of-training summary keys HF treats as single values rather than series.
inline bool is_single_value_scalar(std::string_view key) {
  return key == "train_runtime" || key == "train_samples_per_second" || key == "train_steps_per_second" ||
         key == "train_loss" || key == "total_flos";
}

}  // namespace integrations
}  // namespace torchfit
