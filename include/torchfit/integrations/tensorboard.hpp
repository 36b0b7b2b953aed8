// SPDX-License-Identifier: MIT
// TensorBoard tracker: writes TensorBoard event files (tfevents) directly, without TensorFlow or protobuf.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/system.hpp"
#include "torchfit/integrations/detail/tensorboard_event.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {
namespace detail {

/// Seconds since the Unix epoch, with the fraction (TensorBoard's wall_time).
inline double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// One TensorBoard event file, `events.out.tfevents.<unix time %010d>.<host>.<pid>.<n>` (the name
/// tensorboard's EventFileWriter gives, `n` counting the files this process opened). Starts with the
/// file_version event. Records are buffered until flush(); every write error throws torchfit::Error naming
/// the file.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec)
      throw Error(
          fmt::format("cannot create the TensorBoard log directory {}: {}", dir.string(), ec.message()));
    static std::atomic<int> files_opened{0};
    const double now = unix_time_now();
    path_ = dir / fmt::format("events.out.tfevents.{:010d}.{}.{}.{}", static_cast<std::int64_t>(now),
                              host_name(), ::getpid(), files_opened++);
    file_.reset(std::fopen(path_.c_str(), "wb"));
    if (!file_) fail("cannot create");
    write(tensorboard::file_version_event(now));
    flush();
  }

  /// Appends one serialized Event as a TFRecord.
  void write(std::string_view event) {
    const std::string record = tfrecord(event);
    if (std::fwrite(record.data(), 1, record.size(), file_.get()) != record.size()) fail("cannot write");
  }

  /// Hands everything written so far to the operating system (no fsync: a running TensorBoard sees it).
  void flush() {
    if (std::fflush(file_.get()) != 0) fail("cannot write");
  }

  /// Flushes and closes the file.
  void close() {
    flush();
    if (std::fclose(file_.release()) != 0) fail("cannot close");
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw Error(
        fmt::format("{} the TensorBoard event file {}: {}", what, path_.string(), std::strerror(errno)));
  }

  struct Close {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::filesystem::path path_;
  std::unique_ptr<std::FILE, Close> file_;
};

}  // namespace detail

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
/// The directory is, in order of precedence: the constructor's `log_dir`, `$TENSORBOARD_LOGGING_DIR` (`~`
/// expanded; HF v5), `args.logging_dir`. View with `tensorboard --logdir <output_dir>/runs`.
class TensorBoardCallback : public TrackerCallback {
 public:
  /// `log_dir`, when not empty, overrides TENSORBOARD_LOGGING_DIR and `args.logging_dir`.
  explicit TensorBoardCallback(std::filesystem::path log_dir = {}) : log_dir_(std::move(log_dir)) {}

  void on_train_begin(const Args& args, TrainerState& state, TrainerControl&,
                      const CallbackContext&) override {
    if (!state.is_world_process_zero) return;
    auto& writer = open(args);
    const double now = detail::unix_time_now();
    detail::ProtoMessage summary;
    summary.add_message(1, detail::tensorboard::text_value("args/text_summary", args.to_json_string()));
    summary.add_message(1, detail::tensorboard::session_start_value(args.to_json(), now));
    writer.write(detail::tensorboard::summary_event(now, 0, summary));
    writer.flush();
  }

  void on_log(const Args& args, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!state.is_world_process_zero) return;
    auto& writer = open(args);
    detail::ProtoMessage summary;
    const Logs& logs = *ctx.logs;
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
    writer.write(detail::tensorboard::summary_event(detail::unix_time_now(), state.global_step, summary));
    writer.flush();
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!state.is_world_process_zero || !writer_) return;
    const double now = detail::unix_time_now();
    detail::ProtoMessage summary;
    summary.add_message(1, detail::tensorboard::session_end_value(now));
    // Take the writer out first: a failing close must not leave a half-closed writer behind.
    auto writer = std::move(*writer_);
    writer_.reset();
    writer.write(detail::tensorboard::summary_event(now, state.global_step, summary));
    writer.close();
  }

  /// The event file being written; empty before the first event and after on_train_end.
  std::filesystem::path event_file() const { return writer_ ? writer_->path() : std::filesystem::path(); }

  /// The directory this callback writes to for `args` (constructor, then TENSORBOARD_LOGGING_DIR, then
  /// args.logging_dir).
  std::filesystem::path log_dir(const Args& args) const {
    if (!log_dir_.empty()) return log_dir_;
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
  detail::EventFileWriter& open(const Args& args) {
    if (!writer_) writer_.emplace(log_dir(args));
    return *writer_;
  }

  std::filesystem::path log_dir_;
  std::optional<detail::EventFileWriter> writer_;
};

namespace integrations {
inline const bool tensorboard_registered = register_integration<TensorBoardCallback>("tensorboard", 6);
}  // namespace integrations

}  // namespace torchfit
