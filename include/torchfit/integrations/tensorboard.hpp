// SPDX-License-Identifier: MIT
// TensorBoard tracker: writes TensorBoard event files (tfevents) directly, without TensorFlow or protobuf.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <utility>

#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/event_file_writer.hpp"
#include "torchfit/integrations/detail/tensorboard_event.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where TensorBoardCallback writes.
struct TensorBoardOptions {
  /// The directory; empty: `$TENSORBOARD_LOGGING_DIR` (`~` expanded; HF v5), else `args.logging_dir`.
  std::filesystem::path log_dir;
};

/// Writes the run to TensorBoard event files, like HF's TensorBoardCallback: on_train_begin the training
/// arguments as text `args`; on_log every number (booleans as 0/1) as a scalar at `state.global_step`, tagged
/// `train/<key>`, `eval/<key>` or `test/<key>`, and every string as text under `<tag>/text_summary`;
/// on_train_end closes the file.
///
/// Differences from HF: the hyper-parameters (the training arguments) also go to the HParams dashboard, as a
/// session started at on_train_begin and ended (status SUCCESS) at on_train_end, so each run is one row with
/// its latest metrics; no `model_config` text (libtorch modules have no config). Each writer opens a new
/// event file, so a resumed run adds a file next to the interrupted one's.
///
/// The directory is, in order of precedence: the options' `log_dir`, `$TENSORBOARD_LOGGING_DIR` (`~`
/// expanded; HF v5), `args.logging_dir`. View with `tensorboard --logdir <output_dir>/runs`.
class TensorBoardCallback : public TrackerCallback {
 public:
  explicit TensorBoardCallback(TensorBoardOptions options = {}) : options_(std::move(options)) {}

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state)) return;
    const double now = detail::unix_time_now();
    detail::ProtoMessage summary;
    summary.add_message(1, detail::tensorboard::session_end_value(now));
    // Take the writer out first: a failing close must not leave a half-closed writer behind.
    auto writer = std::move(*writer_);
    writer_.reset();
    run_closed();
    writer.write(detail::tensorboard::summary_event(now, state.global_step, summary));
    writer.close();
  }

  /// The event file being written; empty before the first event and after on_train_end.
  std::filesystem::path event_file() const { return writer_ ? writer_->path() : std::filesystem::path(); }

  /// The directory this callback writes to for `args` (the options' log_dir, then TENSORBOARD_LOGGING_DIR,
  /// then args.logging_dir).
  std::filesystem::path log_dir(const Args& args) const {
    if (!options_.log_dir.empty()) return options_.log_dir;
    if (const char* env = std::getenv("TENSORBOARD_LOGGING_DIR"); env != nullptr && *env != '\0')
      return detail::expand_user(env);
    if (args.logging_dir.empty())
      throw ArgumentError(
          "no TensorBoard log directory: --logging_dir is empty; call TrainingArguments::validate() (which "
          "sets it to "
          "<output_dir>/runs/<date>_<host>) or pass a directory to the constructor");
    return args.logging_dir;
  }

 private:
  // HF opens the writer lazily, at on_train_begin or at the first on_log (evaluate() before train()).
  void open_run(const Args& args, const TrainerState&, const CallbackContext&, OpenedAt) override {
    writer_.emplace(log_dir(args));
  }

  void training_started(const Args& args, const TrainerState&, const CallbackContext&) override {
    const double now = detail::unix_time_now();
    detail::ProtoMessage summary;
    summary.add_message(1, detail::tensorboard::text_value("args/text_summary", args.to_json_string()));
    summary.add_message(1, detail::tensorboard::session_start_value(args.to_json(), now));
    writer_->write(detail::tensorboard::summary_event(now, 0, summary));
    writer_->flush();
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    detail::ProtoMessage summary;
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      const json& value = it.value();
      const std::string tag = integrations::rewrite_log_key(it.key());
      if (value.is_number() || value.is_boolean())
        summary.add_message(1, detail::tensorboard::scalar_value(
                                   tag, value.is_boolean() ? float(value.get<bool>()) : value.get<float>()));
      else if (value.is_string())
        summary.add_message(
            1, detail::tensorboard::text_value(tag + "/text_summary", value.get_ref<const std::string&>()));
      else
        log::warning(
            "TensorBoardCallback: dropping log value \"{}\" = {}: only numbers and strings can be logged",
            it.key(), value.dump());
    }
    writer_->write(detail::tensorboard::summary_event(detail::unix_time_now(), state.global_step, summary));
    writer_->flush();
  }

  TensorBoardOptions options_;
  std::optional<detail::EventFileWriter> writer_;
};

namespace integrations {
inline const bool tensorboard_registered = register_integration<TensorBoardCallback>("tensorboard");
}  // namespace integrations

}  // namespace torchfit
