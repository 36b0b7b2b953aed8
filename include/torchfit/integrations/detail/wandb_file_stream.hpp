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
#include <utility>
#include <vector>

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

/// The rows of one W&B run, each an Outbox row: `{"history": line}`, `{"summary": text}`, `{"upsert":
/// variables}` (a config update) and `{"exitcode": n}` (the end). Consecutive history lines and summaries go
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
    outbox_.push(row_text({{"history", line}}));
  }

  /// Queues the run's summary (its JSON text); one over wandb-core's line limit is skipped with a warning.
  void summary(const std::string& text) {
    if (text.size() > wandb_max_line_bytes)
      return log::warning("W&B: not sending the run's summary: {} bytes, over wandb-core's limit of {} bytes",
                          text.size(), wandb_max_line_bytes);
    outbox_.push(row_text({{"summary", text}}));
  }

  /// Queues a config update (UpsertBucket variables).
  void upsert(const json& variables) { outbox_.push(row_text({{"upsert", variables}})); }

  /// Queues the end of the run with `exit_code`; no heartbeat follows it.
  void end(int exit_code) {
    outbox_.stop_keep_alive();
    outbox_.push(row_text({{"exitcode", exit_code}}));
  }

  /// Whether the server asked the run to stop (the Stop button on its page).
  bool stopped() const { return stopped_; }

  Outbox& outbox() { return outbox_; }

 private:
  // Sends a config update alone, or the history lines and summaries up to the next config update, within the
  // request size (the first line always goes), with the end of the run when it follows them.
  std::size_t send(const Outbox::Rows& rows) {
    const json first = json::parse(rows.front());
    if (const auto upsert = first.find("upsert"); upsert != first.end()) {
      api_.upsert_run(*upsert);
      return 1;
    }
    std::vector<std::string> lines;
    std::optional<std::string> summary;
    std::optional<int> exit_code;
    std::size_t taken = 0;
    std::size_t bytes = 0;
    for (const auto& text : rows) {
      const json row = json::parse(text);
      const auto line = row.find("history");
      const auto latest = row.find("summary");
      const std::size_t size = line != row.end()     ? line->get_ref<const std::string&>().size()
                               : latest != row.end() ? latest->get_ref<const std::string&>().size()
                                                     : 0;
      if (row.contains("upsert") || (bytes > 0 && bytes + size > wandb_max_request_bytes)) break;
      bytes += size;
      ++taken;
      if (line != row.end()) lines.push_back(line->get<std::string>());
      if (latest != row.end()) summary = latest->get<std::string>();
      if (const auto code = row.find("exitcode"); code != row.end()) exit_code = code->get<int>();
    }
    json body = json::object();
    if (!lines.empty())
      body["files"]["wandb-history.jsonl"] = {{"offset", history_offset_}, {"content", lines}};
    if (summary) body["files"]["wandb-summary.json"] = {{"offset", 0}, {"content", json::array({*summary})}};
    if (exit_code) {
      body["complete"] = true;
      body["exitcode"] = *exit_code;
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
  Outbox outbox_;  // last: stopped before what its thread uses
};

}  // namespace torchfit::detail
