// SPDX-License-Identifier: MIT
// Flyte tracker: HF's FlyteCallback, for a training that runs as a Flyte task: checkpoints synced to the task's
// checkpoint prefix, and the log history as the task's deck. Link torchfit::flyte (libcurl).
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/flyte_storage.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where FlyteCallback writes. A C++ task gets its prefixes from Flyte through the container's arguments
/// (`{{.checkpointOutputPrefix}}`, `{{.outputPrefix}}`), which flytekit passes to its own entrypoint the same
/// way; unset members come from the variables a task's command can set from them.
struct FlyteOptions {
  /// The task's checkpoint prefix (`{{.checkpointOutputPrefix}}`). Unset: TORCHFIT_FLYTE_CHECKPOINT_PATH.
  std::optional<std::string> checkpoint_path;
  /// The task's output prefix (`{{.outputPrefix}}`), where Flyte reads the deck. Unset:
  /// TORCHFIT_FLYTE_OUTPUT_PREFIX.
  std::optional<std::string> output_prefix;
  /// HF's `save_log_history`: write the log history as the deck at the end of training.
  bool save_log_history = true;
  /// HF's `sync_checkpoints`: copy each checkpoint to the checkpoint prefix.
  bool sync_checkpoints = true;
  /// How a failed upload is retried (no answer, 408, 409, 429, 5xx): 2 s doubling up to 60 s, 300 s per attempt.
  RetryPolicy retry{2, 60, 300};
  /// How long one file's upload is retried, in seconds. Unset: TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Does what HF's FlyteCallback does inside a flytekit task:
/// - on_save: with `sync_checkpoints`, the checkpoint directory's files go to the task's checkpoint prefix,
///   as flytekit's SyncCheckpoint.save(dir) uploads them (each save replaces the previous one's files; a retry
///   of the task finds them at its `{{.prevCheckpointPrefix}}`).
/// - on_train_end: with `save_log_history`, `state.log_history` as an HTML table (one column per key, in the
///   order the keys first appear, `NaN` where an entry lacks one, as pandas renders HF's DataFrame) in a deck
///   page titled "Log History", written to `<output prefix>/deck.html`, where flytekit writes a task's deck.
/// Outside a Flyte task (no FLYTE_INTERNAL_EXECUTION_ID) the tracker is refused with an error saying so;
/// prefixes are `s3://` (S3 or an S3-compatible store such as a Flyte sandbox's MinIO; see
/// detail::FlyteStorage for the variables), `file://` or local paths.
class FlyteCallback : public TrackerCallback {
 public:
  explicit FlyteCallback(FlyteOptions options = {}) : options_(std::move(options)) {}

  void on_save(const Args&, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!is_open(state) || !storage_ || !options_.sync_checkpoints || ctx.checkpoint_dir == nullptr) return;
    log::info("Syncing checkpoint in {} to Flyte. This may take time.",
              ctx.checkpoint_dir->filename().string());
    storage_->put_directory(*ctx.checkpoint_dir, checkpoint_path_);
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state) || !storage_ || !options_.save_log_history) return;
    storage_->put(output_prefix_, "deck.html", deck_html(state.log_history), "text/html");
  }

  /// The log history as the deck page: HF's `Deck("Log History", TableRenderer().to_html(DataFrame(...)))`.
  static std::string deck_html(const std::vector<Logs>& log_history) {
    std::vector<std::string> columns;
    std::set<std::string> seen;
    for (const auto& entry : log_history)
      for (auto it = entry.begin(); it != entry.end(); ++it)
        if (seen.insert(it.key()).second) columns.push_back(it.key());
    std::string html =
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Log "
        "History</title>\n</head>\n<body>\n"
        "<h2>Log History</h2>\n<table border=\"1\" class=\"dataframe table\">\n<thead>\n<tr "
        "style=\"text-align: "
        "right;\"><th></th>";
    for (const auto& c : columns) html += "<th>" + escape(c) + "</th>";
    html += "</tr>\n</thead>\n<tbody>\n";
    for (std::size_t row = 0; row < log_history.size(); ++row) {
      html += fmt::format("<tr><th>{}</th>", row);
      for (const auto& c : columns) {
        const auto it = log_history[row].find(c);
        html += "<td>" + (it == log_history[row].end() ? "NaN" : escape(detail::python_str(*it))) + "</td>";
      }
      html += "</tr>\n";
    }
    return html + "</tbody>\n</table>\n</body>\n</html>\n";
  }

 private:
  void open_run(const Args&, const TrainerState&, const CallbackContext&, OpenedAt) override {
    if (!detail::flyte_execution_id())
      throw ArgumentError(
          "flyte needs a Flyte task: FLYTE_INTERNAL_EXECUTION_ID, which Flyte sets in a task's container, is "
          "not "
          "set; outside Flyte use another tracker (--report_to csv, tensorboard, ...)");
    checkpoint_path_ = required(options_.checkpoint_path, "TORCHFIT_FLYTE_CHECKPOINT_PATH",
                                "{{.checkpointOutputPrefix}}", options_.sync_checkpoints);
    output_prefix_ = required(options_.output_prefix, "TORCHFIT_FLYTE_OUTPUT_PREFIX", "{{.outputPrefix}}",
                              options_.save_log_history);
    storage_ = std::make_unique<detail::FlyteStorage>(options_.retry, options_.flush_timeout_s);
  }

  void log_entry(const TrainerState&, TrainerControl&, const Logs&) override {}

  // The option, else the variable; an ArgumentError naming both when it is `needed` and neither is set.
  static std::string required(const std::optional<std::string>& option, const char* variable,
                              const char* template_name, bool needed) {
    if (option) return *option;
    if (auto value = detail::env_string(variable)) return *value;
    if (!needed) return {};
    throw ArgumentError(
        fmt::format("flyte: set {} (or FlyteOptions) to the task's {} (pass it in the container's arguments)",
                    variable, template_name));
  }

  static std::string escape(const std::string& text) {
    std::string out;
    for (const char c : text) {
      if (c == '<')
        out += "&lt;";
      else if (c == '>')
        out += "&gt;";
      else if (c == '&')
        out += "&amp;";
      else
        out += c;
    }
    return out;
  }

  FlyteOptions options_;
  std::unique_ptr<detail::FlyteStorage> storage_;
  std::string checkpoint_path_;
  std::string output_prefix_;
};

namespace integrations {
inline const bool flyte_registered = register_integration<FlyteCallback>("flyte");
}  // namespace integrations

}  // namespace torchfit
