// SPDX-License-Identifier: MIT
// Memory metrics per stage (HF's TrainerMemoryTracker, enabled by --skip_memory_metrics false).
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>

#include <torch/torch.h>
#ifndef _WIN32
#include <unistd.h>
#endif

// The CUDA caching allocator's statistics need its header, which CUDA builds of libtorch ship with the CUDA
// runtime headers it includes; CPU builds lack both and report CPU memory only.
#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define TORCHFIT_HAS_CUDA_ALLOCATOR_STATS 1
#else
#define TORCHFIT_HAS_CUDA_ALLOCATOR_STATS 0
#endif

#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// Resident set size of this process in bytes (psutil's memory_info().rss), from /proc/self/statm.
inline std::optional<int64_t> resident_bytes() {
#ifdef _WIN32
  return std::nullopt;
#else
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return std::nullopt;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
#endif
}

/// Peak resident set size since the last reset_resident_peak(), in bytes (VmHWM of /proc/self/status).
inline std::optional<int64_t> resident_peak_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      int64_t kib = 0;
      if (status >> kib) return kib * 1024;
      return std::nullopt;
    }
    status.ignore(4096, '\n');
  }
  return std::nullopt;
}

/// Restarts the kernel's peak-RSS counter. HF polls the RSS from a thread that spins for the whole stage; the
/// kernel's own high-water mark is exact and free.
inline bool reset_resident_peak() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  return static_cast<bool>(clear_refs << "5" << std::flush);
}

/// Memory use of each stage ("init", "train", "eval", "test"): what it left allocated (`alloc`) and how far above
/// that it peaked (`peaked`), for the process's resident memory and, on CUDA, the caching allocator's bytes.
/// A stage started while another runs (evaluation inside training) is ignored, as in HF.
class MemoryTracker {
 public:
  explicit MemoryTracker(bool enabled) : enabled_(enabled) {}

  void start(const std::string& stage, const torch::Device& device) {
    if (!enabled_ || current_) return;
    const auto resident = resident_bytes();
    if (!resident) {
      enabled_ = false;
      log::warning("--skip_memory_metrics false: memory metrics need Linux's /proc/self; none are reported");
      return;
    }
    current_ = stage;
    device_ = device;
    Usage& u = usage_[stage];
    if (!(peak_available_ = reset_resident_peak()) && !peak_warned_) {
      peak_warned_ = true;
      log::warning(
          "--skip_memory_metrics false: /proc/self/clear_refs is not writable, so CPU peaks are not "
          "reported");
    }
    u.cpu_begin = *resident;
    if (auto gpu = cuda_allocated(true)) u.gpu_begin = *gpu;
  }

  /// Ends `stage` (no-op unless it is the running one).
  void stop(const std::string& stage) {
    if (!enabled_ || current_ != stage) return;
    Usage& u = usage_[stage];
    u.cpu_end = resident_bytes().value_or(0);
    if (peak_available_) u.cpu_peaked = std::max<int64_t>(0, resident_peak_bytes().value_or(0) - u.cpu_end);
    if (auto gpu = cuda_allocated(false)) {
      u.gpu_end = *gpu;
      u.gpu_peaked = std::max<int64_t>(0, cuda_peak() - *gpu);
    }
    current_.reset();
  }

  /// Ends `stage` and adds its metrics to `metrics`; the first time, init's too, since the constructor has no
  /// metrics to return (HF).
  void stop_and_update_metrics(const std::string& stage, Logs& metrics) {
    if (!enabled_ || current_ != stage) return;
    stop(stage);
    const bool with_init = !init_reported_ && usage_.count("init");
    if (with_init) add_metrics("init", metrics);
    add_metrics(stage, metrics);
    if (with_init) {
      init_reported_ = true;
      metrics["before_init_mem_cpu"] = usage_["init"].cpu_begin;
      if (usage_["init"].gpu_begin) metrics["before_init_mem_gpu"] = *usage_["init"].gpu_begin;
    }
  }

 private:
  struct Usage {
    int64_t cpu_begin = 0, cpu_end = 0;
    std::optional<int64_t> cpu_peaked;
    std::optional<int64_t> gpu_begin, gpu_end, gpu_peaked;
  };

  void add_metrics(const std::string& stage, Logs& metrics) const {
    const Usage& u = usage_.at(stage);
    metrics[stage + "_mem_cpu_alloc_delta"] = u.cpu_end - u.cpu_begin;
    if (u.gpu_begin && u.gpu_end) metrics[stage + "_mem_gpu_alloc_delta"] = *u.gpu_end - *u.gpu_begin;
    if (u.cpu_peaked) metrics[stage + "_mem_cpu_peaked_delta"] = *u.cpu_peaked;
    if (u.gpu_peaked) metrics[stage + "_mem_gpu_peaked_delta"] = *u.gpu_peaked;
  }

  // Bytes held by tensors on the CUDA device; at a stage's start the cache is emptied and the peak reset first.
  std::optional<int64_t> cuda_allocated([[maybe_unused]] bool starting) const {
#if TORCHFIT_HAS_CUDA_ALLOCATOR_STATS
    if (!device_.is_cuda()) return std::nullopt;
    namespace alloc = c10::cuda::CUDACachingAllocator;
    const auto index = static_cast<c10::DeviceIndex>(device_.has_index() ? device_.index() : 0);
    alloc::emptyCache();
    if (starting) alloc::resetPeakStats(index);
    return alloc::getDeviceStats(index).allocated_bytes[0].current;  // [0]: all pools together
#else
    return std::nullopt;
#endif
  }

  int64_t cuda_peak() const {
#if TORCHFIT_HAS_CUDA_ALLOCATOR_STATS
    const auto index = static_cast<c10::DeviceIndex>(device_.has_index() ? device_.index() : 0);
    return c10::cuda::CUDACachingAllocator::getDeviceStats(index).allocated_bytes[0].peak;
#else
    return 0;
#endif
  }

  bool enabled_;
  bool init_reported_ = false;
  bool peak_available_ = false;
  bool peak_warned_ = false;
  std::optional<std::string> current_;
  torch::Device device_ = torch::kCPU;
  std::map<std::string, Usage> usage_;
};

}  // namespace torchfit::detail
