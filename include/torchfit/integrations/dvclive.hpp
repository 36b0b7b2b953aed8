// SPDX-License-Identifier: MIT
// DVCLive tracker: writes the files DVCLive writes (metrics.json, plots/metrics/*.tsv, params.yaml,
// dvc.yaml), so `dvc plots show`, `dvc metrics show` and `dvc exp show` read a torchfit run as a DVCLive one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/dvclive_files.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where DVCLiveCallback writes.
struct DVCLiveOptions {
  /// DVCLive's output directory (`dvclive`, relative to the working directory, as DVCLive's default).
  std::filesystem::path dir = "dvclive";
};

/// Logs the run in DVCLive's format, like HF's DVCLiveCallback with a default `Live()`:
/// - on_train_begin (or the first on_log): a fresh run (global step 0) removes what an earlier run left in
/// the
///   directory (as `Live(resume=False)`), then writes the training arguments to `params.yaml` and a
///   `dvc.yaml` pointing DVC at the files below.
/// - on_log: each number, boolean or string goes to `plots/metrics/<name>.tsv` (header `step\t<basename>`,
/// one
///   row per log) and to the `metrics.json` summary, under DVCLive's names (`eval_loss` -> `eval/loss`,
///   `train_runtime` -> `train/runtime`, `loss` unchanged); then the DVCLive step advances by one. Other
///   values are dropped with HF's warning, once per key.
/// - on_train_end: the summary is written a last time.
///
/// The step is DVCLive's own counter of on_log calls, not the global step (HF). A run resumed from a
/// checkpoint continues it from the number of entries in `state.log_history` (one per on_log before the
/// checkpoint): rows the interrupted run wrote after its checkpoint are dropped and the summary is rebuilt
/// from the history, so no row is duplicated or lost.
///
/// Differences from HF: `dvc.yaml` is written inside the DVCLive directory (DVC finds it there) rather than
/// in the working directory; no DVC experiment is saved (`save_dvc_exp` needs DVC itself);
/// `HF_DVCLIVE_LOG_MODEL` is not supported.
class DVCLiveCallback : public TrackerCallback {
 public:
  explicit DVCLiveCallback(DVCLiveOptions options = {}) : dir_(std::move(options.dir)) {}

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state)) write_summary_file();
  }

  /// The DVCLive directory.
  const std::filesystem::path& dir() const { return dir_; }
  /// The DVCLive step the next on_log writes.
  std::int64_t step() const { return step_; }

 private:
  void log_entry(const TrainerState&, TrainerControl&, const Logs& logs) override {
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      if (!detail::dvclive_can_log(it.value())) {
        if (warned_keys_.insert(it.key()).second)
          log::warning(
              "Trainer is attempting to log a value of \"{}\" of type {} for key \"{}\" as a scalar. This "
              "invocation of DVCLive's Live.log_metric() is incorrect so we dropped this attribute.",
              detail::python_str(it.value()), detail::python_type_repr(it.value()), it.key());
        continue;
      }
      log_metric(detail::dvclive_metric_name(it.key()), detail::dvclive_value(it.value()));
    }
    write_summary();
    ++step_;
  }

  std::filesystem::path plots_dir() const { return dir_ / "plots" / "metrics"; }

  void open_run(const Args& args, const TrainerState& state, const CallbackContext&, OpenedAt) override {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec)
      throw Error(fmt::format("cannot create the DVCLive directory {}: {}", dir_.string(), ec.message()));
    if (state.global_step == 0) {
      std::filesystem::remove_all(plots_dir(), ec);
      for (const char* name : {"metrics.json", "params.yaml", "report.html", "report.md", "dvc.yaml"})
        std::filesystem::remove(dir_ / name, ec);
    } else {
      resume(state);
    }
    detail::replace_file(dir_ / "params.yaml", detail::yaml_block(args.to_json(), ""));
    detail::replace_file(
        dir_ / "dvc.yaml",
        "params:\n- params.yaml\nmetrics:\n- metrics.json\nplots:\n- plots/metrics:\n    x: step\n");
  }

  // Continues after the checkpoint: one DVCLive step per log_history entry.
  void resume(const TrainerState& state) {
    step_ = static_cast<std::int64_t>(state.log_history.size());
    std::error_code ec;
    if (std::filesystem::exists(plots_dir(), ec))
      for (const auto& entry : std::filesystem::recursive_directory_iterator(plots_dir())) {
        if (!entry.is_regular_file() || entry.path().extension() != ".tsv") continue;
        const std::string text = *detail::read_file_if_exists(entry.path());
        std::string kept;
        std::size_t start = 0;
        for (std::size_t line = 0; start < text.size(); ++line) {
          const std::size_t end = text.find('\n', start);
          if (end == std::string::npos) break;  // a row cut short
          const std::string row = text.substr(start, end + 1 - start);
          if (line == 0 || std::stoll(row.substr(0, row.find('\t'))) < step_) kept += row;
          start = end + 1;
        }
        if (kept != text) detail::replace_file(entry.path(), kept);
      }
    for (const auto& entry : state.log_history)
      for (auto it = entry.begin(); it != entry.end(); ++it)
        if (it.key() != "step" && detail::dvclive_can_log(it.value()))
          detail::dvclive_set_in(summary_, detail::dvclive_metric_name(it.key()),
                                 detail::dvclive_value(it.value()));
    if (step_ > 0) {
      summary_["step"] = step_ - 1;
      write_summary_file();
    }
  }

  void log_metric(const std::string& name, const json& value) {
    const auto path = plots_dir() / (name + ".tsv");
    std::string text;
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
      text = "step\t" + detail::dvclive_tsv_cell(std::filesystem::path(name).filename().string()) + "\n";
    text += fmt::format("{}\t{}\n", step_, detail::dvclive_tsv_cell(value));
    detail::append_to_file(path, text);
    detail::dvclive_set_in(summary_, name, value);
  }

  void write_summary() {
    summary_["step"] = step_;
    write_summary_file();
  }

  void write_summary_file() {
    detail::replace_file(dir_ / "metrics.json", detail::python_json_dumps(summary_, 4, false) + "\n");
  }

  std::filesystem::path dir_;
  std::int64_t step_ = 0;
  json summary_ = json::object();
  std::set<std::string> warned_keys_;
};

namespace integrations {
inline const bool dvclive_registered = register_integration<DVCLiveCallback>("dvclive");
}  // namespace integrations

}  // namespace torchfit
