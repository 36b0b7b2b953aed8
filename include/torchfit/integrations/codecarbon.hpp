// SPDX-License-Identifier: MIT
// CodeCarbon tracker: a native estimate of the energy a training run used and of its emissions, appended to
// `<output_dir>/emissions.csv` in CodeCarbon's format (CPU from RAPL or a load model, RAM from a DIMM model,
// NVIDIA GPUs from NVML loaded at run time).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "torchfit/integrations/detail/emissions_estimator.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"

namespace torchfit {

/// Settings of the estimate. Unset members come from CodeCarbon's environment variables
/// (`CODECARBON_<NAME>`), else CodeCarbon's defaults.
struct CodeCarbonOptions {
  std::optional<std::string> project_name;   ///< CODECARBON_PROJECT_NAME, default "codecarbon"
  std::optional<std::string> experiment_id;  ///< CODECARBON_EXPERIMENT_ID, default CodeCarbon's fixed id
  std::optional<double> measure_power_secs;  ///< CODECARBON_MEASURE_POWER_SECS, default 15
  std::optional<double> pue;                 ///< CODECARBON_PUE (power usage effectiveness), default 1.0
  std::optional<double> wue;                 ///< CODECARBON_WUE (litres of water per kWh), default 0
  std::optional<double> force_cpu_power;     ///< CODECARBON_FORCE_CPU_POWER: constant CPU watts
  std::optional<double> force_ram_power;     ///< CODECARBON_FORCE_RAM_POWER: constant RAM watts
  /// CODECARBON_FORCE_CARBON_INTENSITY_G_CO2E_KWH; default 475, CodeCarbon's world average for an unknown
  /// place.
  std::optional<double> carbon_intensity_g_per_kwh;
  bool measure_gpu = true;  ///< read NVIDIA GPUs through NVML when the driver is present
  std::filesystem::path powercap_root = "/sys/class/powercap";  ///< where RAPL domains are looked for
  std::filesystem::path proc_root = "/proc";                    ///< stat, meminfo and cpuinfo
};

/// Estimates the energy and emissions of training, like HF's CodeCarbonCallback (CodeCarbon's
/// EmissionsTracker started at on_train_begin and stopped at on_train_end, on the local process zero), and
/// appends one row to `<output_dir>/emissions.csv` with CodeCarbon's 38 columns.
///
/// The figures are estimates: CPU energy from the RAPL package counters when readable (else CodeCarbon's load
/// model at its 85 W default TDP), RAM power from CodeCarbon's DIMM model, NVIDIA GPU energy from NVML's
/// energy counters, emissions at 475 g CO2eq/kWh (CodeCarbon's world average; no location lookup). A file
/// with other columns is kept as `emissions.csv.bak` and a new one started, as CodeCarbon does.
class CodeCarbonCallback : public TrackerCallback {
 public:
  explicit CodeCarbonCallback(CodeCarbonOptions options = {})
      : TrackerCallback(Process::local_zero), options_(std::move(options)) {}

  void on_train_end(const Args& args, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state) || !estimator_) return;
    auto estimator = std::move(estimator_);
    const auto row = estimator->stop(
        options_.project_name.value_or(detail::env_string("CODECARBON_PROJECT_NAME").value_or("codecarbon")),
        options_.experiment_id.value_or(detail::env_string("CODECARBON_EXPERIMENT_ID")
                                            .value_or(detail::codecarbon_default_experiment_id)),
        detail::option_or_env(options_.pue, "CODECARBON_PUE").value_or(1.0),
        detail::option_or_env(options_.wue, "CODECARBON_WUE").value_or(0.0),
        detail::option_or_env(options_.carbon_intensity_g_per_kwh,
                              "CODECARBON_FORCE_CARBON_INTENSITY_G_CO2E_KWH")
            .value_or(detail::codecarbon_world_intensity_g_per_kwh));
    detail::codecarbon_append_row(std::filesystem::path(args.output_dir) / "emissions.csv", row);
  }

  /// How CPU power is measured in the current interval ("RAPL", "constant", "cpu_load"); empty when not
  /// started.
  std::string cpu_method() const { return estimator_ ? estimator_->cpu_method() : std::string(); }

 private:
  // The measurement starts with training (HF's EmissionsTracker.start() at on_train_begin), not at a log.
  void open_run(const Args&, const TrainerState&, const CallbackContext&, OpenedAt) override {}
  void log_entry(const TrainerState&, TrainerControl&, const Logs&) override {}

  void training_started(const Args&, const TrainerState&, const CallbackContext&) override {
    if (estimator_) return;
    estimator_ = std::make_unique<detail::EmissionsEstimator>(detail::EstimatorSettings{
        detail::option_or_env(options_.measure_power_secs, "CODECARBON_MEASURE_POWER_SECS").value_or(15),
        detail::option_or_env(options_.force_cpu_power, "CODECARBON_FORCE_CPU_POWER"),
        detail::option_or_env(options_.force_ram_power, "CODECARBON_FORCE_RAM_POWER"), options_.measure_gpu,
        options_.powercap_root, options_.proc_root});
  }

  CodeCarbonOptions options_;
  std::unique_ptr<detail::EmissionsEstimator> estimator_;
};

namespace integrations {
inline const bool codecarbon_registered = register_integration<CodeCarbonCallback>("codecarbon");
}  // namespace integrations

}  // namespace torchfit
