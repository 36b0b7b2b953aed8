// SPDX-License-Identifier: MIT
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// A logging/eval/save interval as HF's TrainerState holds it: a whole step count (a Python int), or the float
/// HF keeps from its command line when the interval's strategy is not "steps" (`2.5`, `1.0`), written back as is.
struct IntervalSteps {
  double value = 500;
  bool is_float = false;  ///< a Python float: written `1.0`, `2.5`

  IntervalSteps() = default;
  IntervalSteps(int64_t steps) : value(static_cast<double>(steps)) {}  // NOLINT(google-explicit-constructor)
  static IntervalSteps python_float(double value) {
    IntervalSteps out;
    out.value = value;
    out.is_float = true;
    return out;
  }
  /// The step count DefaultFlow divides by (whole whenever the interval's strategy is "steps").
  operator int64_t() const { return static_cast<int64_t>(value); }  // NOLINT(google-explicit-constructor)
};

namespace detail {

// One overload per member type, so that TrainerState lists its fields once (for_each_field).
inline json field_to_json(int64_t value) { return value; }
inline json field_to_json(double value) { return value; }  // always a JSON float: `0.0`, never `0`
inline json field_to_json(bool value) { return value; }
inline json field_to_json(const std::string& value) { return value; }
inline json field_to_json(const IntervalSteps& value) {
  return value.is_float ? json(value.value) : json(static_cast<int64_t>(value));
}
inline json field_to_json(const std::vector<Logs>& value) { return json(value); }
inline json field_to_json(const json& value) { return value; }
template <typename T>
json field_to_json(const std::optional<T>& value) {
  return value ? field_to_json(*value) : json(nullptr);
}

// Each returns false when the JSON value has the wrong type for the member.
inline bool field_from_json(const json& value, int64_t& out) {
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  } else if (value.is_number_float()) {
    // HF writes e.g. `"logging_steps": 1.0` when the user passed a float; accept any integral value in range.
    const double d = value.get<double>();
    if (std::trunc(d) != d || d < -0x1p63 || d >= 0x1p63) return false;
    out = static_cast<int64_t>(d);
    return true;
  } else if (!value.is_number_integer()) {
    return false;
  }
  out = value.get<int64_t>();
  return true;
}
// As Python reads it: an int stays an int, a float (even `1.0`) a float.
inline bool field_from_json(const json& value, IntervalSteps& out) {
  if (value.is_number_float()) {
    out = IntervalSteps::python_float(value.get<double>());
    return true;
  }
  int64_t steps = 0;
  if (!field_from_json(value, steps)) return false;
  out = steps;
  return true;
}
inline bool field_from_json(const json& value, double& out) {
  if (!value.is_number()) return false;
  out = value.get<double>();
  return true;
}
inline bool field_from_json(const json& value, bool& out) {
  if (!value.is_boolean()) return false;
  out = value.get<bool>();
  return true;
}
inline bool field_from_json(const json& value, std::string& out) {
  if (!value.is_string()) return false;
  out = value.get<std::string>();
  return true;
}
inline bool field_from_json(const json& value, std::vector<Logs>& out) {
  if (!value.is_array()) return false;
  for (const json& entry : value)
    if (!entry.is_object()) return false;
  out.assign(value.begin(), value.end());
  return true;
}
// trial_params and stateful_callbacks: dicts or None.
inline bool field_from_json(const json& value, json& out) {
  if (!value.is_object() && !value.is_null()) return false;
  out = value;
  return true;
}
template <typename T>
bool field_from_json(const json& value, std::optional<T>& out) {
  if (value.is_null()) {
    out.reset();
    return true;
  }
  T inner{};
  if (!field_from_json(value, inner)) return false;
  out = std::move(inner);
  return true;
}

// A value for an error message, in JSON and cut short (json.dumps output is ASCII, so any cut is clean).
inline std::string brief(const json& value) {
  const std::string text = python_json_dumps(value, -1);
  return text.size() <= 60 ? text : text.substr(0, 57) + "...";
}

// What field_from_json accepts, for error messages.
inline std::string expected_type(const int64_t&) { return "an integer"; }
inline std::string expected_type(const double&) { return "a number"; }
inline std::string expected_type(const IntervalSteps&) { return "a number"; }
inline std::string expected_type(const bool&) { return "true or false"; }
inline std::string expected_type(const std::string&) { return "a string"; }
inline std::string expected_type(const std::vector<Logs>&) { return "a list of objects"; }
inline std::string expected_type(const json&) { return "an object or null"; }
template <typename T>
std::string expected_type(const std::optional<T>&) {
  return expected_type(T{}) + " or null";
}

}  // namespace detail

/// The training loop's progress, shared with every callback and saved as `trainer_state.json` in checkpoints
/// (HF's TrainerState: same fields, meanings and file bytes).
struct TrainerState {
  std::optional<double>
      epoch;  ///< fractional epoch; null until training starts, 0 (an int, as HF) before the first step
  int64_t global_step = 0;            ///< optimizer updates done
  int64_t max_steps = 0;              ///< updates planned for this run
  IntervalSteps logging_steps = 500;  ///< intervals, ratios resolved by compute_steps
  IntervalSteps eval_steps = 500;
  IntervalSteps save_steps = 500;
  std::optional<int64_t> train_batch_size;  ///< micro-batch size actually used
  int64_t num_train_epochs = 0;
  int64_t num_input_tokens_seen = 0;
  double total_flos = 0;
  std::vector<Logs> log_history;  ///< every logged dict plus its "step"
  std::optional<double> best_metric;
  std::optional<int64_t> best_global_step;
  std::optional<std::string> best_model_checkpoint;
  bool is_local_process_zero = true;
  bool is_world_process_zero = true;
  bool is_hyper_param_search = false;
  std::optional<std::string> trial_name;
  json trial_params = nullptr;
  json stateful_callbacks = json::object();  ///< callback states by key (a list for several instances)

  /// HF's `dataclasses.asdict(state)`: every field, null for an empty optional, epoch and total_flos floats
  /// (except the epoch HF sets to the int 0 before the first step).
  json to_json() const {
    json out = json::object();
    for_each_field(*this,
                   [&](const char* name, const auto& field) { out[name] = detail::field_to_json(field); });
    if (epoch) out["epoch"] = epoch_json();
    return out;
  }

  /// The epoch as HF writes it in logs and files: the int `0` before the first step, else a float.
  json epoch_json() const {
    if (!epoch) return nullptr;
    return *epoch == 0 ? json(0) : json(*epoch);
  }

  /// The bytes HF's save_to_json writes: `json.dumps(asdict(state), indent=2, sort_keys=True) + "\n"`.
  std::string to_json_string() const { return detail::python_json_dumps(to_json()) + "\n"; }

  /// Writes to_json_string() to `path`, replacing the file; throws torchfit::Error naming the path if it
  /// cannot.
  void save_to_json(const std::filesystem::path& path) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << to_json_string();
    out.close();
    if (out.fail())
      throw Error(
          fmt::format("cannot write the trainer state to {}: {}", path.string(), std::strerror(errno)));
  }

  /// Builds a state from HF's dict form. Missing fields keep their defaults; an unknown field is a warning
  /// (HF raises TypeError; a warning lets files from newer versions load); a field of the wrong type throws
  /// torchfit::FormatError naming the field, `source` and the expected type.
  static TrainerState from_json(const json& object, const std::string& source) {
    if (!object.is_object())
      throw FormatError(
          fmt::format("{}: a trainer state must be a JSON object, got {}", source, detail::brief(object)));
    TrainerState state;
    for (auto it = object.begin(); it != object.end(); ++it) {
      bool known = false;
      for_each_field(state, [&](const char* name, auto& field) {
        if (it.key() != name) return;
        known = true;
        if (!detail::field_from_json(it.value(), field))
          throw FormatError(fmt::format("{}: field \"{}\" must be {}, got {}", source, name,
                                        detail::expected_type(field), detail::brief(it.value())));
      });
      if (!known) log::warning("{}: ignoring unknown trainer state field \"{}\"", source, it.key());
    }
    if (state.stateful_callbacks.is_null()) state.stateful_callbacks = json::object();  // HF: None -> {}
    return state;
  }

  /// Reads a `trainer_state.json` written by HF or torchfit; a missing, unreadable or malformed file throws
  /// torchfit::FormatError naming the path and the problem.
  static TrainerState load_from_json(const std::filesystem::path& path) {
    return from_json(detail::python_json_load(path), path.string());
  }

  /// HF's compute_steps: copies logging / eval / save intervals from `args`, turning a ratio (< 1) into
  /// `ceil(total_steps * ratio)`. An unset `args.eval_steps` leaves eval_steps as it is. Values keep the type
  /// HF's command line gives them: floats, except whole counts above 1 under a "steps" strategy (HF's
  /// __post_init__ makes those ints) and HF's default 500.
  void compute_steps(const TrainingArguments& args, int64_t total_steps) {
    const auto interval = [&](double value, bool steps_strategy) -> IntervalSteps {
      if (value < 1) return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * value));
      if ((steps_strategy && value > 1) || value == IntervalSteps{}.value) return static_cast<int64_t>(value);
      return IntervalSteps::python_float(value);
    };
    logging_steps = interval(args.logging_steps, args.logging_strategy == IntervalStrategy::steps);
    if (args.eval_steps)
      eval_steps = interval(*args.eval_steps, args.eval_strategy == IntervalStrategy::steps);
    save_steps = interval(args.save_steps, args.save_strategy == SaveStrategy::steps);
  }

  /// HF's init_training_references, run after a fresh start or a resume: records the planned steps and
  /// epochs, clears trial_params (no hyper-parameter search) and marks this process as the main one (torchfit
  /// trains in a single process).
  void init_training_references(int64_t total_steps, int64_t epochs) {
    max_steps = total_steps;
    num_train_epochs = epochs;
    trial_params = nullptr;
    is_local_process_zero = true;
    is_world_process_zero = true;
  }

 private:
  // Every serialized member as (HF name, member), in HF's declaration order.
  template <typename Self, typename Visitor>
  static void for_each_field(Self& self, Visitor&& visit) {
    visit("epoch", self.epoch);
    visit("global_step", self.global_step);
    visit("max_steps", self.max_steps);
    visit("logging_steps", self.logging_steps);
    visit("eval_steps", self.eval_steps);
    visit("save_steps", self.save_steps);
    visit("train_batch_size", self.train_batch_size);
    visit("num_train_epochs", self.num_train_epochs);
    visit("num_input_tokens_seen", self.num_input_tokens_seen);
    visit("total_flos", self.total_flos);
    visit("log_history", self.log_history);
    visit("best_metric", self.best_metric);
    visit("best_global_step", self.best_global_step);
    visit("best_model_checkpoint", self.best_model_checkpoint);
    visit("is_local_process_zero", self.is_local_process_zero);
    visit("is_world_process_zero", self.is_world_process_zero);
    visit("is_hyper_param_search", self.is_hyper_param_search);
    visit("trial_name", self.trial_name);
    visit("trial_params", self.trial_params);
    visit("stateful_callbacks", self.stateful_callbacks);
  }
};

}  // namespace torchfit
