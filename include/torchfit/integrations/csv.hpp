// SPDX-License-Identifier: MIT
// CSV tracker: every log entry as one row of <output_dir>/logs.csv.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {
namespace detail {

/// A log value as a CSV cell: integers in decimal, floats as Python's repr (`0.1`, `1e-05`, `nan`), booleans
/// as `True`/`False`, strings as they are, null as an empty cell, anything else as its JSON text.
inline std::string csv_cell(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "";
    case json::value_t::boolean:
      return value.get<bool>() ? "True" : "False";
    case json::value_t::number_integer:
      return std::to_string(value.get<std::int64_t>());
    case json::value_t::number_unsigned:
      return std::to_string(value.get<std::uint64_t>());
    case json::value_t::number_float:
      return python_float_repr(value.get<double>());
    case json::value_t::string:
      return value.get<std::string>();
    default:
      return value.dump();
  }
}

/// The header of a CSV log read back from `path`; it must start with `step,epoch` (torchfit never rewrites a
/// file it did not write).
inline std::vector<std::string> csv_log_header(const std::vector<std::vector<std::string>>& records,
                                               const std::filesystem::path& path) {
  if (records.empty()) return {};
  const auto& header = records.front();
  if (header.size() < 2 || header[0] != "step" || header[1] != "epoch") {
    std::string line = csv_record(header);
    line.pop_back();
    throw Error(
        fmt::format("{} is not a CSV log written by CSVCallback: its header must start with \"step,epoch\" "
                    "(got \"{}\"); remove it or give CSVCallback another path",
                    path.string(), line));
  }
  return header;
}

/// The step in the first cell of a row, if it is an integer.
inline std::optional<std::int64_t> csv_row_step(const std::vector<std::string>& row) {
  std::int64_t step = 0;
  if (row.empty()) return std::nullopt;
  const std::string& cell = row.front();
  const auto [end, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), step);
  if (ec != std::errc() || end != cell.data() + cell.size()) return std::nullopt;
  return step;
}

}  // namespace detail

/// Writes every log entry as one row of a CSV file (default `<output_dir>/logs.csv`): header
/// `step,epoch,<log keys in order of first appearance>`, `step` = `state.global_step`. Keys are the Trainer's
/// own
/// (`loss`, `eval_loss`, ...; not rewritten to `train/...`).
///
/// When a key first appears (say `eval_loss` at the first evaluation) the file is rewritten with the wider
/// header, earlier rows keeping their values and leaving the new cells empty; the rewrite replaces the file
/// in one step (temporary file + rename), so it is never seen half-written. Other rows are appended and
/// handed to the operating system at once. A fresh run (global step 0 at on_train_begin) starts the file
/// over; a resumed run drops the rows the interrupted run logged after its checkpoint (step > the resumed
/// global step) and appends.
class CSVCallback : public TrackerCallback {
 public:
  /// `path`, when not empty, replaces `<output_dir>/logs.csv`.
  explicit CSVCallback(std::filesystem::path path = {}) : path_(std::move(path)) {}

  void on_train_begin(const Args& args, TrainerState& state, TrainerControl&,
                      const CallbackContext&) override {
    if (!state.is_world_process_zero || opened_) return;
    const auto file = open(args);
    const auto text = detail::restart_or_resume(file, state, [&](const std::string& old, std::int64_t step) {
      auto records = detail::parse_csv(old);
      detail::csv_log_header(records, file);
      std::string kept;
      for (std::size_t i = 0; i < records.size(); ++i) {
        const auto row_step = detail::csv_row_step(records[i]);
        if (i == 0 || !row_step || *row_step <= step) kept += detail::csv_record(records[i]);
      }
      return kept;
    });
    columns_ = text ? detail::csv_log_header(detail::parse_csv(*text), file) : std::vector<std::string>{};
  }

  void on_log(const Args& args, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!state.is_world_process_zero) return;
    if (!opened_) {
      // An evaluation before any training appends to what an earlier run left.
      const auto file = open(args);
      const auto text = detail::read_file_if_exists(file);
      if (text) columns_ = detail::csv_log_header(detail::parse_csv(*text), file);
    }
    const Logs& logs = *ctx.logs;
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

  /// The file written (empty until the first event that writes).
  const std::filesystem::path& file() const { return file_; }

 private:
  const std::filesystem::path& open(const Args& args) {
    opened_ = true;
    file_ = detail::log_file_path(path_, args.output_dir, "logs.csv");
    return file_;
  }

  std::filesystem::path path_;
  std::filesystem::path file_;
  bool opened_ = false;
  std::vector<std::string> columns_;  // the header of the file as written so far (empty: no file yet)
};

namespace integrations {
inline const bool csv_registered = register_integration<CSVCallback>("csv", 20);
}  // namespace integrations

}  // namespace torchfit
