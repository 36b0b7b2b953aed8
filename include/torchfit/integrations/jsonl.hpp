// SPDX-License-Identifier: MIT
// JSON-lines tracker: every log entry as one JSON object per line of <output_dir>/logs.jsonl.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/integration.hpp"

namespace torchfit {

/// Where JSONLinesCallback writes.
struct JSONLinesOptions {
  /// The file; empty: `<output_dir>/logs.jsonl`.
  std::filesystem::path path;
};

/// Writes every log entry as one line of a JSON-lines file (default `<output_dir>/logs.jsonl`):
/// `{"step": <global_step>, "epoch": <epoch or null>, <the entry's other keys and values>}`, in the form
/// Python's `json.dumps` gives (so NaN and infinities appear as `NaN`, `Infinity`, as in trainer_state.json).
/// Keys are the Trainer's own (`loss`, `eval_loss`, ...; not rewritten to `train/...`). Each line is appended
/// and handed to the operating system at once.
///
/// A fresh run (global step 0 at on_train_begin) starts the file over; a resumed run drops the lines the
/// interrupted run logged after its checkpoint (step > the resumed global step), and a last line cut short,
/// then appends.
class JSONLinesCallback : public TrackerCallback {
 public:
  explicit JSONLinesCallback(JSONLinesOptions options = {}) : options_(std::move(options)) {}

  /// The file written (empty until the first event that writes).
  const std::filesystem::path& file() const { return file_; }

 private:
  void open_run(const Args& args, const TrainerState& state, const CallbackContext&, OpenedAt at) override {
    file_ = detail::log_file_path(options_.path, args.output_dir, "logs.jsonl");
    // Training starts the file over or resumes it; an evaluation before any training appends.
    if (at != OpenedAt::train_begin) return;
    detail::restart_or_resume(file_, state, [&](const std::string& old, std::int64_t step) {
      std::string kept;
      for (std::size_t begin = 0, end; (end = old.find('\n', begin)) != std::string::npos; begin = end + 1) {
        const std::string_view line(old.data() + begin, end - begin + 1);
        if (!after_step(line, step)) kept += line;
      }
      return kept;
    });
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    json entry = {{"step", state.global_step}, {"epoch", detail::log_entry_epoch(logs, state)}};
    for (auto it = logs.begin(); it != logs.end(); ++it)
      if (it.key() != "step" && it.key() != "epoch") entry[it.key()] = it.value();
    detail::append_to_file(file_, detail::python_json_dumps(entry, -1, false) + "\n");
  }

  // Whether a line holds an entry logged after `step`; lines that are not such an entry are kept.
  bool after_step(std::string_view line, std::int64_t step) const {
    try {
      const json entry = detail::python_json_parse(line, file_.string());
      const auto it = entry.find("step");
      return entry.is_object() && it != entry.end() && it->is_number_integer() &&
             it->get<std::int64_t>() > step;
    } catch (const FormatError&) {
      return false;
    }
  }

  JSONLinesOptions options_;
  std::filesystem::path file_;
};

namespace integrations {
inline const bool jsonl_registered = register_integration<JSONLinesCallback>("jsonl");
}  // namespace integrations

}  // namespace torchfit
