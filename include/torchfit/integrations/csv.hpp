// SPDX-License-Identifier: MIT
// CSV tracker: every log entry as one row of <output_dir>/logs.csv.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/integration.hpp"

namespace torchfit {

/// Where CSVCallback writes.
struct CSVOptions {
  /// The file; empty: `<output_dir>/logs.csv`.
  std::filesystem::path path;
};

/// Writes every log entry as one row of a CSV file (default `<output_dir>/logs.csv`): header
/// `step,epoch,<log keys in order of first appearance>`, `step` = `state.global_step`. Keys are the Trainer's
/// own (`loss`, `eval_loss`, ...; not rewritten to `train/...`).
///
/// When a key first appears (say `eval_loss` at the first evaluation) the file is rewritten with the wider
/// header, earlier rows keeping their values and leaving the new cells empty; the rewrite replaces the file
/// in one step (temporary file + rename), so it is never seen half-written. Other rows are appended and
/// handed to the operating system at once. A fresh run (global step 0 at on_train_begin) starts the file
/// over; a resumed run drops the rows the interrupted run logged after its checkpoint (step > the resumed
/// global step) and appends.
class CSVCallback : public TrackerCallback {
 public:
  explicit CSVCallback(CSVOptions options = {}) : options_(std::move(options)) {}

  /// The file written (empty until the first event that writes).
  const std::filesystem::path& file() const { return file_; }

 private:
  void open_run(const Args& args, const TrainerState& state, const CallbackContext&, OpenedAt at) override {
    file_ = detail::log_file_path(options_.path, args.output_dir, "logs.csv");
    // Training starts the file over or resumes it; an evaluation before any training appends to what an
    // earlier run left.
    const auto text = at == OpenedAt::train_begin
                          ? detail::restart_or_resume(file_, state,
                                                      [&](const std::string& old, std::int64_t step) {
                                                        return rows_through(old, step);
                                                      })
                          : detail::read_file_if_exists(file_);
    columns_ = text ? detail::csv_log_header(detail::parse_csv(*text), file_) : std::vector<std::string>{};
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    auto columns = columns_.empty() ? std::vector<std::string>{"step", "epoch"} : columns_;
    for (auto it = logs.begin(); it != logs.end(); ++it)
      if (std::find(columns.begin(), columns.end(), it.key()) == columns.end()) columns.push_back(it.key());

    std::vector<std::string> row{std::to_string(state.global_step),
                                 detail::csv_cell(detail::log_entry_epoch(logs, state))};
    for (std::size_t i = 2; i < columns.size(); ++i) {
      const auto it = logs.find(columns[i]);
      row.push_back(it == logs.end() ? std::string() : detail::csv_cell(*it));
    }
    if (columns.size() == columns_.size()) {
      detail::append_to_file(file_, detail::csv_record(row));
      return;
    }
    // New keys: rewrite everything under the wider header, earlier rows padded with empty cells.
    std::string text = detail::csv_record(columns);
    if (const auto old = detail::read_file_if_exists(file_)) {
      auto records = detail::parse_csv(*old);
      for (std::size_t i = 1; i < records.size(); ++i) {
        if (records[i].size() < columns.size()) records[i].resize(columns.size());
        text += detail::csv_record(records[i]);
      }
    }
    text += detail::csv_record(row);
    detail::replace_file(file_, text);
    columns_ = std::move(columns);
  }

  // The header and the rows logged at or before `step` (a row cut short is left out by parse_csv).
  std::string rows_through(const std::string& old, std::int64_t step) const {
    auto records = detail::parse_csv(old);
    detail::csv_log_header(records, file_);
    std::string kept;
    for (std::size_t i = 0; i < records.size(); ++i) {
      const auto row_step = detail::csv_row_step(records[i]);
      if (i == 0 || !row_step || *row_step <= step) kept += detail::csv_record(records[i]);
    }
    return kept;
  }

  CSVOptions options_;
  std::filesystem::path file_;
  std::vector<std::string> columns_;  // the header of the file as written so far (empty: no file yet)
};

namespace integrations {
inline const bool csv_registered = register_integration<CSVCallback>("csv");
}  // namespace integrations

}  // namespace torchfit
