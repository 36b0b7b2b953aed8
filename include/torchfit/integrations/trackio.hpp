// SPDX-License-Identifier: MIT
// Trackio tracker: writes Trackio's local SQLite project database directly, so `trackio show` lists the run.
// Link torchfit::trackio (SQLite).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/detail/trackio_database.hpp"
#include "torchfit/integrations/integration.hpp"

namespace torchfit {

/// Which Trackio project TrackioCallback logs to.
struct TrackioOptions {
  /// Trackio's project (HF's `args.project`, default "huggingface").
  std::string project = "huggingface";
};

/// Logs the run to Trackio's local project database, like HF's TrackioCallback:
/// - on_train_begin (or the first on_log): opens `<TRACKIO_DIR>/<project>.db` (`TRACKIO_DIR` defaults to
///   `$HF_HOME/trackio`, `HF_HOME` to `$XDG_CACHE_HOME/huggingface`, as huggingface_hub resolves them, i.e.
///   `~/.cache/huggingface/trackio`), creating Trackio's tables; the run is `args.run_name` (else
///   `trackio-run-<8 hex>`), resumed when the project already has a run of that name (Trackio's
///   `resume="allow"`); its config row holds `args.to_json()`, `model/num_parameters` and Trackio's
///   `_Username`, `_Created`, `_Group`.
/// - on_log: the end-of-training single values (`train_runtime`, `train_loss`, ...) are dropped, keys
/// rewritten
///   (`loss` -> `train/loss`, `eval_loss` -> `eval/loss`), `train/global_step` added, and the row stored at
///   the run's next step (its largest step plus one, from 0). Values are stored as JSON (NaN and infinities
///   as the strings Trackio uses).
/// A run resumed from a checkpoint deletes the rows the interrupted run logged after the checkpoint's global
/// step before continuing, so no step is duplicated. View with `trackio show --project <project>`.
class TrackioCallback : public TrackerCallback {
 public:
  explicit TrackioCallback(TrackioOptions options = {}) : options_(std::move(options)) {}

  /// The project database (empty before setup).
  std::filesystem::path database_path() const { return db_ ? db_->path() : std::filesystem::path(); }
  /// The run's id and name (empty before setup).
  const std::string& run_id() const { return run_id_; }
  const std::string& run_name() const { return run_name_; }

 private:
  void open_run(const Args& args, const TrainerState& state, const CallbackContext& ctx, OpenedAt) override {
    db_ = std::make_unique<detail::TrackioDatabase>(
        detail::trackio_dir() / (detail::trackio_canonical_project(options_.project) + ".db"));
    run_name_ = args.run_name.value_or("trackio-run-" + detail::random_hex(8));
    json config = args.to_json();
    if (const auto count = integrations::model_num_parameters(ctx)) config["model/num_parameters"] = *count;
    config["_Username"] = nullptr;
    config["_Created"] = detail::iso_utc_now();
    config["_Group"] = nullptr;
    db_->transaction([&] {
      detail::TrackioDatabase::Statement find(*db_,
                                              "SELECT run_id FROM configs WHERE run_name = ? UNION ALL "
                                              "SELECT run_id FROM metrics WHERE run_name = ? "
                                              "LIMIT 1");
      find.bind(1, run_name_).bind(2, run_name_);
      run_id_ = find.step() ? find.text(0).value_or("") : std::string();
      if (run_id_.empty()) {
        run_id_ = detail::uuid4_hex();
      } else if (state.global_step > 0) {
        detail::TrackioDatabase::Statement drop(
            *db_,
            "DELETE FROM metrics WHERE run_id = ? AND "
            "json_extract(CAST(metrics AS TEXT), '$.\"train/global_step\"') > ?");
        drop.bind(1, run_id_).bind(2, state.global_step).step();
      }
      detail::TrackioDatabase::Statement store(
          *db_, "INSERT OR REPLACE INTO configs (run_id, run_name, config, created_at) VALUES (?, ?, ?, ?)");
      store.bind(1, run_id_).bind(2, run_name_);
      store.bind(3, detail::trackio_serialize(config).dump(-1, ' ', false, json::error_handler_t::replace));
      store.bind(4, config["_Created"].get<std::string>()).step();
    });
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    json metrics = json::object();
    for (auto it = logs.begin(); it != logs.end(); ++it)
      if (!integrations::is_single_value_scalar(it.key()))
        metrics[integrations::rewrite_log_key(it.key())] = detail::trackio_serialize(it.value());
    metrics["train/global_step"] = state.global_step;
    const std::string text = metrics.dump(-1, ' ', false, json::error_handler_t::replace);
    db_->transaction([&] {
      detail::TrackioDatabase::Statement last(*db_, "SELECT MAX(step) FROM metrics WHERE run_id = ?");
      last.bind(1, run_id_).step();
      const auto max_step = last.integer(0);
      detail::TrackioDatabase::Statement insert(
          *db_, "INSERT INTO metrics (timestamp, run_id, run_name, step, metrics) VALUES (?, ?, ?, ?, ?)");
      insert.bind(1, detail::iso_utc_now()).bind(2, run_id_).bind(3, run_name_);
      insert.bind(4, max_step ? *max_step + 1 : std::int64_t{0}).bind(5, text).step();
    });
  }

  TrackioOptions options_;
  std::unique_ptr<detail::TrackioDatabase> db_;
  std::string run_id_;
  std::string run_name_;
};

namespace integrations {
inline const bool trackio_registered = register_integration<TrackioCallback>("trackio");
}  // namespace integrations

}  // namespace torchfit
