// SPDX-License-Identifier: MIT
// A native estimate of the energy a run uses and of its emissions, as CodeCarbon makes it (CPU from RAPL or a
// load model, RAM from a DIMM model, NVIDIA GPUs from NVML loaded at run time), and CodeCarbon's
// emissions.csv.
#pragma once

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// CodeCarbon's emissions.csv columns (v3.3), in order.
inline constexpr const char* codecarbon_columns[] = {"timestamp",
                                                     "project_name",
                                                     "run_id",
                                                     "experiment_id",
                                                     "duration",
                                                     "emissions",
                                                     "emissions_rate",
                                                     "cpu_power",
                                                     "gpu_power",
                                                     "ram_power",
                                                     "cpu_energy",
                                                     "gpu_energy",
                                                     "ram_energy",
                                                     "energy_consumed",
                                                     "water_consumed",
                                                     "country_name",
                                                     "country_iso_code",
                                                     "region",
                                                     "cloud_provider",
                                                     "cloud_region",
                                                     "os",
                                                     "python_version",
                                                     "codecarbon_version",
                                                     "cpu_count",
                                                     "cpu_model",
                                                     "gpu_count",
                                                     "gpu_model",
                                                     "longitude",
                                                     "latitude",
                                                     "ram_total_size",
                                                     "tracking_mode",
                                                     "cpu_utilization_percent",
                                                     "gpu_utilization_percent",
                                                     "ram_utilization_percent",
                                                     "ram_used_gb",
                                                     "on_cloud",
                                                     "pue",
                                                     "wue"};

/// CodeCarbon's default experiment id.
inline constexpr const char* codecarbon_default_experiment_id = "5b0fa12a-3dd7-45bb-9766-cc326314d9f1";
/// CodeCarbon's TDP for a CPU it cannot match (POWER_CONSTANT), in watts.
inline constexpr double codecarbon_default_tdp_w = 85.0;
/// CodeCarbon's world-average carbon intensity, used when the location is unknown (g CO2eq / kWh).
inline constexpr double codecarbon_world_intensity_g_per_kwh = 475.0;

/// Microjoules between two readings of a RAPL counter that wraps at `max_range_uj` (at most one wrap between
/// readings, as CodeCarbon assumes).
inline std::uint64_t rapl_delta_uj(std::uint64_t before, std::uint64_t after, std::uint64_t max_range_uj) {
  return after >= before ? after - before : after + max_range_uj - before;
}

/// CodeCarbon's DIMM-count estimate from the total memory in GB.
inline int codecarbon_dimm_count(double total_gb) {
  if (total_gb <= 2) return 1;
  if (total_gb <= 16) return 2;
  if (total_gb <= 32) return 4;
  if (total_gb <= 64) return 4;
  if (total_gb <= 128) return 8;
  for (const double size : {128.0, 64.0, 32.0, 16.0, 8.0, 4.0})
    if (size <= total_gb / 8) return std::min(32, static_cast<int>(std::ceil(total_gb / size)));
  return 8;
}

/// CodeCarbon's RAM power model (v3): 5 W per DIMM on x86 (1.5 W on ARM), less for DIMMs 5-8 (x0.9), 9-16
/// (x0.8) and beyond (x0.7); at least 10 W on x86 (3 W on ARM).
inline double codecarbon_ram_power_w(double total_gb, bool arm) {
  const int dimms = codecarbon_dimm_count(total_gb);
  const double per_dimm = arm ? 1.5 : 5.0;
  const double floor = arm ? 3.0 : per_dimm * 2;
  double power = 0;
  if (dimms <= 4)
    power = per_dimm * dimms;
  else if (dimms <= 8)
    power = per_dimm * 4 + per_dimm * 0.9 * (dimms - 4);
  else if (dimms <= 16)
    power = per_dimm * 4 + per_dimm * 0.9 * 4 + per_dimm * 0.8 * (dimms - 8);
  else
    power = per_dimm * 4 + per_dimm * 0.9 * 4 + per_dimm * 0.8 * 8 + per_dimm * 0.7 * (dimms - 16);
  return std::max(floor, power);
}

/// CodeCarbon's CPU load model (machine mode): `tdp * (0.1 + 0.9 * load^3)`, load in [0, 1].
inline double codecarbon_cpu_load_power_w(double tdp_w, double load) {
  return tdp_w * (0.1 + 0.9 * load * load * load);
}

/// Busy and total jiffies of all CPUs (first line of /proc/stat; idle = idle + iowait; guest time is already
/// in user time).
struct CpuTimes {
  std::uint64_t busy = 0;
  std::uint64_t total = 0;
};

inline std::optional<CpuTimes> read_cpu_times(const std::filesystem::path& proc_root) {
  std::ifstream in(proc_root / "stat");
  std::string label;
  std::uint64_t f[8] = {};
  if (!(in >> label) || label != "cpu") return std::nullopt;
  for (auto& v : f)
    if (!(in >> v)) return std::nullopt;
  CpuTimes t;
  for (const auto v : f) t.total += v;
  t.busy = t.total - f[3] - f[4];
  return t;
}

/// Total and available memory in GiB (CodeCarbon's "GB"), from /proc/meminfo.
struct MemoryInfo {
  double total_gb = 0;
  double available_gb = 0;
};

inline std::optional<MemoryInfo> read_memory_info(const std::filesystem::path& proc_root) {
  std::ifstream in(proc_root / "meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  MemoryInfo m;
  bool total = false;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemTotal:") {
      m.total_gb = double(kib) / (1024.0 * 1024.0);
      total = true;
    } else if (key == "MemAvailable:") {
      m.available_gb = double(kib) / (1024.0 * 1024.0);
    }
  }
  if (!total) return std::nullopt;
  return m;
}

/// The CPU model name from /proc/cpuinfo ("model name", else "Processor"); empty if not found.
inline std::string read_cpu_model(const std::filesystem::path& proc_root) {
  std::ifstream in(proc_root / "cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key == "model name" || key == "Processor") {
      const auto start = line.find_first_not_of(" \t", colon + 1);
      return start == std::string::npos ? std::string() : line.substr(start);
    }
  }
  return {};
}

/// One RAPL package domain (`<powercap>/intel-rapl:<n>` whose name starts with `package`).
struct RaplDomain {
  std::filesystem::path energy_file;
  std::uint64_t max_range_uj = 0;
  std::uint64_t last_uj = 0;
};

inline std::optional<std::uint64_t> read_uint_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::uint64_t v = 0;
  if (!(in >> v)) return std::nullopt;
  return v;
}

/// The readable package domains, as CodeCarbon uses them by default (sub-domains core/uncore/dram, top-level
/// dram and psys are left out, so nothing is counted twice).
inline std::vector<RaplDomain> find_rapl_domains(const std::filesystem::path& powercap_root) {
  std::vector<RaplDomain> out;
  std::error_code ec;
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(powercap_root, ec))
    dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& dir : dirs) {
    const std::string name = dir.filename().string();
    if (name.rfind("intel-rapl:", 0) != 0 || name.find(':', 11) != std::string::npos) continue;
    std::ifstream domain_name(dir / "name");
    std::string label;
    if (!(domain_name >> label) || label.rfind("package", 0) != 0) continue;
    const auto energy = read_uint_file(dir / "energy_uj");
    if (!energy) continue;  // often readable by root only
    out.push_back({dir / "energy_uj", read_uint_file(dir / "max_energy_range_uj").value_or(0), *energy});
  }
  return out;
}

/// NVIDIA's management library, loaded with dlopen so that machines without the driver need nothing.
class Nvml {
 public:
  Nvml() {
    lib_ = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) return;
    init_ = symbol<Fn<>>("nvmlInit_v2");
    shutdown_ = symbol<Fn<>>("nvmlShutdown");
    count_ = symbol<Fn<unsigned*>>("nvmlDeviceGetCount_v2");
    handle_ = symbol<Fn<unsigned, Device*>>("nvmlDeviceGetHandleByIndex_v2");
    energy_ = symbol<Fn<Device, unsigned long long*>>("nvmlDeviceGetTotalEnergyConsumption");
    power_ = symbol<Fn<Device, unsigned*>>("nvmlDeviceGetPowerUsage");
    name_ = symbol<Fn<Device, char*, unsigned>>("nvmlDeviceGetName");
    utilization_ = symbol<Fn<Device, Utilization*>>("nvmlDeviceGetUtilizationRates");
    unsigned count = 0;
    if (!init_ || !shutdown_ || !count_ || !handle_ || init_() != 0) return;
    initialized_ = true;
    if (count_(&count) != 0) return;
    for (unsigned i = 0; i < count; ++i) {
      Device d = nullptr;
      if (handle_(i, &d) == 0) devices_.push_back(d);
    }
  }
  ~Nvml() {
    if (initialized_) shutdown_();
    if (lib_ != nullptr) ::dlclose(lib_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  std::size_t device_count() const { return devices_.size(); }
  /// Energy used since the driver loaded, in millijoules.
  std::optional<unsigned long long> energy_mj(std::size_t i) const {
    unsigned long long v = 0;
    if (energy_ == nullptr || energy_(devices_[i], &v) != 0) return std::nullopt;
    return v;
  }
  /// Current draw in milliwatts.
  std::optional<unsigned> power_mw(std::size_t i) const {
    unsigned v = 0;
    if (power_ == nullptr || power_(devices_[i], &v) != 0) return std::nullopt;
    return v;
  }
  /// GPU utilisation in percent.
  std::optional<unsigned> utilization(std::size_t i) const {
    Utilization u{};
    if (utilization_ == nullptr || utilization_(devices_[i], &u) != 0) return std::nullopt;
    return u.gpu;
  }
  std::string name(std::size_t i) const {
    char buffer[96] = {};
    if (name_ == nullptr || name_(devices_[i], buffer, sizeof buffer) != 0) return "Unknown GPU";
    return buffer;
  }

 private:
  using Device = struct nvmlDevice_st*;
  struct Utilization {
    unsigned gpu;
    unsigned memory;
  };
  template <typename... A>
  using Fn = int (*)(A...);

  template <typename F>
  F symbol(const char* name) const {
    return reinterpret_cast<F>(::dlsym(lib_, name));
  }

  void* lib_ = nullptr;
  bool initialized_ = false;
  Fn<> init_ = nullptr;
  Fn<> shutdown_ = nullptr;
  Fn<unsigned*> count_ = nullptr;
  Fn<unsigned, Device*> handle_ = nullptr;
  Fn<Device, unsigned long long*> energy_ = nullptr;
  Fn<Device, unsigned*> power_ = nullptr;
  Fn<Device, char*, unsigned> name_ = nullptr;
  Fn<Device, Utilization*> utilization_ = nullptr;
  std::vector<Device> devices_;
};

/// Python's `platform.platform()` on Linux: `Linux-<release>-<machine>-with-glibc<version>`.
inline std::string platform_text() {
  utsname u{};
  if (::uname(&u) != 0) return "Linux";
  return fmt::format("{}-{}-{}-with-glibc{}", u.sysname, u.release, u.machine, gnu_get_libc_version());
}

/// A setting: the option when set, else the number in environment variable `env` (CodeCarbon's CODECARBON_*).
inline std::optional<double> option_or_env(const std::optional<double>& option, const char* env) {
  return option ? option : env_number(env);
}

/// What an EmissionsEstimator measures with: CodeCarbonOptions resolved against the environment.
struct EstimatorSettings {
  double measure_power_secs = 0;  // the period of samples; 0: one sample, at the end
  std::optional<double> force_cpu_w;
  std::optional<double> force_ram_w;
  bool measure_gpu = false;
  std::filesystem::path powercap_root;  // where RAPL domains are looked for
  std::filesystem::path proc_root;      // stat, meminfo and cpuinfo
};

/// The measurement of one tracked interval: samples taken every `measure_power_secs` on a thread of its own
/// and once more at stop().
class EmissionsEstimator {
 public:
  explicit EmissionsEstimator(EstimatorSettings settings) : settings_(std::move(settings)) {
    if (settings_.measure_gpu) nvml_.emplace();
    rapl_ = find_rapl_domains(settings_.powercap_root);
    memory_ = read_memory_info(settings_.proc_root);
    cpu_times_ = read_cpu_times(settings_.proc_root);
    if (nvml_)
      for (std::size_t i = 0; i < nvml_->device_count(); ++i) gpu_energy_mj_.push_back(nvml_->energy_mj(i));
    start_ = last_ = std::chrono::steady_clock::now();
    if (settings_.measure_power_secs > 0) sampler_ = std::thread([this] { sample_loop(); });
  }
  ~EmissionsEstimator() { stop_sampler(); }
  EmissionsEstimator(const EmissionsEstimator&) = delete;
  EmissionsEstimator& operator=(const EmissionsEstimator&) = delete;

  /// How CPU power is obtained: "RAPL", "constant" (forced) or "cpu_load" (the load model at 85 W TDP).
  std::string cpu_method() const {
    return settings_.force_cpu_w ? "constant" : !rapl_.empty() ? "RAPL" : "cpu_load";
  }

  /// Ends the interval with a last sample and returns the CSV row (values by column name).
  std::map<std::string, std::string> stop(const std::string& project_name, const std::string& experiment_id,
                                          double pue, double wue, double intensity_g_per_kwh) {
    stop_sampler();
    sample();
    const double duration = std::chrono::duration<double>(last_ - start_).count();
    const double j_to_kwh = pue / 3.6e6;
    const double cpu_kwh = cpu_j_ * j_to_kwh;
    const double gpu_kwh = gpu_j_ * j_to_kwh;
    const double ram_kwh = ram_j_ * j_to_kwh;
    const double total_kwh = cpu_kwh + gpu_kwh + ram_kwh;
    const double emissions = total_kwh * intensity_g_per_kwh / 1000.0;
    const double n = std::max<double>(1, samples_);
    std::string gpu_model;
    std::map<std::string, int> gpu_names;
    if (nvml_)
      for (std::size_t i = 0; i < nvml_->device_count(); ++i) ++gpu_names[nvml_->name(i)];
    for (const auto& [name, count] : gpu_names) gpu_model += fmt::format("{} x {}", count, name);
    const auto f = [](double v) { return python_float_repr(v); };
    char stamp[32];
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &local);
    return {{"timestamp", stamp},
            {"project_name", project_name},
            {"run_id", uuid4()},
            {"experiment_id", experiment_id},
            {"duration", f(duration)},
            {"emissions", f(emissions)},
            {"emissions_rate", f(duration > 0 ? emissions / duration : 0.0)},
            {"cpu_power", f(cpu_w_sum_ / n)},
            {"gpu_power", f(gpu_w_sum_ / n)},
            {"ram_power", f(ram_w_sum_ / n)},
            {"cpu_energy", f(cpu_kwh)},
            {"gpu_energy", f(gpu_kwh)},
            {"ram_energy", f(ram_kwh)},
            {"energy_consumed", f(total_kwh)},
            {"water_consumed", f(total_kwh * wue)},
            {"country_name", ""},
            {"country_iso_code", ""},
            {"region", ""},
            {"cloud_provider", ""},
            {"cloud_region", ""},
            {"os", platform_text()},
            {"python_version", ""},
            {"codecarbon_version", ""},
            {"cpu_count", std::to_string(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)))},
            {"cpu_model", read_cpu_model(settings_.proc_root)},
            {"gpu_count", std::to_string(nvml_ ? nvml_->device_count() : 0)},
            {"gpu_model", gpu_model},
            {"longitude", ""},
            {"latitude", ""},
            {"ram_total_size", f(memory_ ? memory_->total_gb : 0.0)},
            {"tracking_mode", "machine"},
            {"cpu_utilization_percent", f(cpu_load_sum_ / n)},
            {"gpu_utilization_percent", f(gpu_util_sum_ / n)},
            {"ram_utilization_percent", f(ram_util_sum_ / n)},
            {"ram_used_gb", f(ram_used_sum_ / n)},
            {"on_cloud", "N"},
            {"pue", f(pue)},
            {"wue", f(wue)}};
  }

 private:
  void sample_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto period = std::chrono::duration<double>(settings_.measure_power_secs);
    while (!stopping_) {
      if (wake_.wait_for(lock, period, [this] { return stopping_; })) break;
      sample_locked();
    }
  }

  void stop_sampler() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (sampler_.joinable()) sampler_.join();
  }

  void sample() {
    std::lock_guard<std::mutex> lock(mutex_);
    sample_locked();
  }

  // One sample: energy since the previous one for CPU, GPU and RAM, and the power and utilisation readings.
  void sample_locked() {
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    ++samples_;

    double cpu_load = 0;
    if (const auto times = read_cpu_times(settings_.proc_root)) {
      if (cpu_times_ && times->total > cpu_times_->total)
        cpu_load = double(times->busy - cpu_times_->busy) / double(times->total - cpu_times_->total);
      cpu_times_ = times;
    }
    cpu_load_sum_ += cpu_load * 100;
    double cpu_w = 0;
    double cpu_j = 0;
    if (settings_.force_cpu_w) {
      cpu_w = *settings_.force_cpu_w;
      cpu_j = cpu_w * dt;
    } else if (!rapl_.empty()) {
      for (auto& d : rapl_)
        if (const auto now_uj = read_uint_file(d.energy_file)) {
          cpu_j += double(rapl_delta_uj(d.last_uj, *now_uj, d.max_range_uj)) / 1e6;
          d.last_uj = *now_uj;
        }
      cpu_w = dt > 0 ? cpu_j / dt : 0;
    } else {
      cpu_w = codecarbon_cpu_load_power_w(codecarbon_default_tdp_w, cpu_load);
      cpu_j = cpu_w * dt;
    }
    cpu_j_ += cpu_j;
    cpu_w_sum_ += cpu_w;

    const auto memory = read_memory_info(settings_.proc_root);
    if (memory) {
      ram_used_sum_ += memory->total_gb - memory->available_gb;
      ram_util_sum_ +=
          memory->total_gb > 0 ? 100 * (memory->total_gb - memory->available_gb) / memory->total_gb : 0;
    }
#if defined(__aarch64__) || defined(__arm__)
    constexpr bool arm = true;
#else
    constexpr bool arm = false;
#endif
    const double ram_w = settings_.force_ram_w ? *settings_.force_ram_w
                         : memory              ? codecarbon_ram_power_w(memory->total_gb, arm)
                                               : 0;
    ram_j_ += ram_w * dt;
    ram_w_sum_ += ram_w;

    double gpu_w = 0;
    double gpu_util = 0;
    if (nvml_)
      for (std::size_t i = 0; i < nvml_->device_count(); ++i) {
        const auto energy = nvml_->energy_mj(i);
        double joules = 0;
        if (energy && gpu_energy_mj_[i] && *energy >= *gpu_energy_mj_[i])
          joules = double(*energy - *gpu_energy_mj_[i]) / 1000.0;
        else if (const auto mw = nvml_->power_mw(i))
          joules = double(*mw) / 1000.0 * dt;  // no energy counter: the current draw over the interval
        gpu_energy_mj_[i] = energy;
        gpu_j_ += joules;
        gpu_w += dt > 0 ? joules / dt : 0;
        gpu_util += nvml_->utilization(i).value_or(0);
      }
    gpu_w_sum_ += gpu_w;
    gpu_util_sum_ += nvml_ && nvml_->device_count() > 0 ? gpu_util / double(nvml_->device_count()) : 0;
  }

  EstimatorSettings settings_;
  std::optional<Nvml> nvml_;
  std::vector<RaplDomain> rapl_;
  std::optional<MemoryInfo> memory_;
  std::optional<CpuTimes> cpu_times_;
  std::vector<std::optional<unsigned long long>> gpu_energy_mj_;
  std::chrono::steady_clock::time_point start_, last_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread sampler_;
  int samples_ = 0;
  double cpu_j_ = 0, gpu_j_ = 0, ram_j_ = 0;
  double cpu_w_sum_ = 0, gpu_w_sum_ = 0, ram_w_sum_ = 0;
  double cpu_load_sum_ = 0, gpu_util_sum_ = 0, ram_util_sum_ = 0, ram_used_sum_ = 0;
};

/// Appends `row` (values by column name) to CodeCarbon's emissions.csv at `path` as CodeCarbon does: under
/// the same columns it appends; a file with other columns is kept as `<path>.bak` (else `<path>_<n>.bak`) and
/// a new one started. Fields are quoted as pandas quotes them: only when they hold a comma, a double quote or
/// a line break.
inline void codecarbon_append_row(const std::filesystem::path& path,
                                  const std::map<std::string, std::string>& row) {
  const std::vector<std::string> columns(std::begin(codecarbon_columns), std::end(codecarbon_columns));
  std::vector<std::string> values;
  for (const auto& column : columns) values.push_back(row.at(column));
  const std::string header = csv_record(columns), line = csv_record(values);
  auto existing = read_file_if_exists(path);
  if (existing && !existing->empty()) {
    std::vector<std::string> old_columns;
    std::stringstream first(existing->substr(0, existing->find('\n')));
    for (std::string c; std::getline(first, c, ',');)
      old_columns.push_back(c.back() == '\r' ? c.substr(0, c.size() - 1) : c);
    std::vector<std::string> new_columns = columns;
    std::sort(old_columns.begin(), old_columns.end());
    std::sort(new_columns.begin(), new_columns.end());
    if (old_columns == new_columns) return append_to_file(path, line);
    log::warning("The CSV format has changed, backing up old emission file.");
    std::filesystem::path backup = path.string() + ".bak";
    for (int i = 0; std::filesystem::exists(backup); ++i)
      backup = path.string() + "_" + std::to_string(i) + ".bak";
    std::error_code ec;
    std::filesystem::rename(path, backup, ec);
    if (ec)
      throw Error(fmt::format("cannot back up {} as {}: {}", path.string(), backup.string(), ec.message()));
  }
  replace_file(path, header + line);
}

}  // namespace torchfit::detail
