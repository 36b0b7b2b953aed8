// SPDX-License-Identifier: MIT
// A W&B run's rows on their way to the server: history lines, summaries, config updates and the end of the
// run, sent as wandb's client sends them (file_stream requests within wandb-core's size limits, GraphQL for
// the config), from an Outbox.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/wandb_api.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// wandb-core's limits (core/internal/filestream): one history or summary line, which the back end refuses
/// beyond, and the approximate size of one file_stream request (the sum of its lines).
inline constexpr std::size_t wandb_max_line_bytes = (std::size_t{10} << 20) - (std::size_t{100} << 10);
inline constexpr std::size_t wandb_max_request_bytes = std::size_t{10} << 20;

/// The rows of one W&B run, each an Outbox row: `{"history": <line>}`, `{"summary": <summary>}`, `{"upsert":
/// <variables>}` (a config update) and `{"exitcode": <n>}` (the end), the lines written in as W&B takes them
/// (Python's JSON: NaN and Infinity bare). Consecutive history lines and summaries go
/// in one file_stream request of at most wandb_max_request_bytes, with the latest summary only; the end goes
/// with the last of them. A heartbeat (an empty file_stream request) goes after `heartbeat_interval_s`
/// without any.
class WandbFileStream {
 public:
  /// `history_offset` is the line the next history line goes to (a resumed run's line count).
  WandbFileStream(WandbApi& api, WandbRunRef run, std::int64_t history_offset, Outbox::Settings settings,
                  double heartbeat_interval_s)
      : api_(api),
        run_(std::move(run)),
        history_offset_(history_offset),
        outbox_(
            std::move(settings), [this](const Outbox::Rows& rows) { return send(rows); }, api.http()) {
    outbox_.set_keep_alive(
        std::chrono::duration<double>(heartbeat_interval_s), [this] { api_.file_stream(run_, "{}"); },
        KeepAlive::when_idle);
  }

  /// Queues the history row `line` (its `_step` is `step`). A line over wandb-core's limit is dropped with a
  /// warning naming it, as wandb-core drops it.
  void history(const std::string& line, std::int64_t step) {
    if (line.size() > wandb_max_line_bytes)
      return log::warning(
          "W&B: dropping the history row of _step {}: {} bytes, over wandb-core's limit of {} bytes per line",
          step, line.size(), wandb_max_line_bytes);
    outbox_.push(row("history", line));
  }

  /// Queues the run's summary (its JSON text). One over wandb-core's line limit is not sent (as wandb-core
  /// skips it), with one warning for the run.
  void summary(const std::string& text) {
    if (text.size() <= wandb_max_line_bytes) return outbox_.push(row("summary", text));
    if (std::exchange(summary_warned_, true)) return;
    log::warning("W&B: not sending the run's summary: {} bytes, over wandb-core's limit of {} bytes per line",
                 text.size(), wandb_max_line_bytes);
  }

  /// Queues a config update (UpsertBucket variables).
  void upsert(const json& variables) { outbox_.push(row("upsert", row_text(variables))); }

  /// Queues the end of the run with `exit_code`; no heartbeat follows it.
  void end(int exit_code) {
    outbox_.stop_keep_alive();
    outbox_.push(row("exitcode", std::to_string(exit_code)));
  }

  /// Whether the server asked the run to stop (the Stop button on its page).
  bool stopped() const { return stopped_; }

  Outbox& outbox() { return outbox_; }

 private:
  // The row `{"<kind>": <text>}`: the text goes in as it is, not escaped into a string (history lines are
  // big).
  static std::string row(std::string_view kind, std::string_view text) {
    return fmt::format("{{\"{}\": {}}}", kind, text);
  }

  // The text of `row` when it is of `kind`; nothing otherwise.
  static std::optional<std::string_view> payload(std::string_view row, std::string_view kind) {
    const std::string prefix = fmt::format("{{\"{}\": ", kind);
    if (row.substr(0, prefix.size()) != prefix) return std::nullopt;
    return row.substr(prefix.size(), row.size() - prefix.size() - 1);
  }

  // Sends a config update alone, or the history lines and summaries up to the next config update, within the
  // request size (the first line always goes), with the end of the run when it follows them.
  std::size_t send(const Outbox::Rows& rows) {
    if (const auto upsert = payload(rows.front(), "upsert")) {
      api_.upsert_run(json::parse(*upsert));
      return 1;
    }
    std::vector<std::string> lines;
    std::optional<std::string_view> summary;
    std::optional<std::string_view> exit_code;
    std::size_t taken = 0;
    std::size_t lines_bytes = 0;  // the request's size is its lines' and its (latest) summary's
    for (const auto& text : rows) {
      if (payload(text, "upsert")) break;
      const auto line = payload(text, "history");
      const auto latest = payload(text, "summary");
      const std::size_t line_bytes = line ? line->size() : 0;
      const std::size_t summary_bytes = latest ? latest->size() : summary ? summary->size() : 0;
      if (taken > 0 && lines_bytes + line_bytes + summary_bytes > wandb_max_request_bytes) break;
      ++taken;
      lines_bytes += line_bytes;
      if (line) lines.emplace_back(*line);
      if (latest) summary = latest;
      if (const auto code = payload(text, "exitcode")) exit_code = code;
    }
    json body = json::object();
    if (!lines.empty())
      body["files"]["wandb-history.jsonl"] = {{"offset", history_offset_}, {"content", lines}};
    if (summary)
      body["files"]["wandb-summary.json"] = {{"offset", 0},
                                             {"content", json::array({std::string(*summary)})}};
    if (exit_code) {
      body["complete"] = true;
      body["exitcode"] = std::stoi(std::string(*exit_code));
    }
    const json answer = api_.file_stream(run_, python_json_dumps(body, -1, false));
    history_offset_ += static_cast<std::int64_t>(lines.size());
    if (const auto it = answer.find("stopped"); it != answer.end() && *it == true) stopped_ = true;
    return taken;
  }

  WandbApi& api_;
  WandbRunRef run_;
  std::int64_t history_offset_;  // the line of the next history line; the sending thread's
  std::atomic<bool> stopped_{false};
  bool summary_warned_ = false;
  Outbox outbox_;  // last: stopped before what its thread uses
};

}  // namespace torchfit::detail
