// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "torchfit/json.hpp"

namespace torchfit::detail {

inline double round_to(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

/// HF's speed_metrics: `<split>_runtime` (4 decimals) and, when time passed, the rates of what was given.
inline void add_speed_metrics(Logs& metrics, const std::string& split, double seconds,
                              std::optional<int64_t> samples, std::optional<int64_t> steps,
                              std::optional<int64_t> tokens = std::nullopt) {
  metrics[split + "_runtime"] = round_to(seconds, 4);
  if (seconds <= 0) return;
  const auto rate = [&](const char* what, std::optional<int64_t> count) {
    if (count)
      metrics[split + "_" + what + "_per_second"] = round_to(static_cast<double>(*count) / seconds, 3);
  };
  rate("samples", samples);
  rate("steps", steps);
  rate("tokens", tokens);
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace torchfit::detail
