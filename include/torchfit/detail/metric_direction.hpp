// SPDX-License-Identifier: MIT
// Which way a metric improves, as far as its name tells: HF's rule ("loss" at the end means lower is better,
// anything else higher) and a warning for names that break it (an error measure maximised by mistake).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>

#include "torchfit/detail/strings.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// Whether `name` has, as a whole segment (split at anything but letters and digits), a word for a measure
/// where lower is better: "eval_mse", "val-RMSE", "word_error_rate", "ppl" do; "accuracy", "f1", "mse2" do
/// not.
inline bool looks_like_error_measure(std::string_view name) {
  static constexpr std::array<std::string_view, 21> lower_is_better = {
      "loss", "error", "err",        "mse", "rmse", "mae", "msle",  "rmsle",   "mape",     "smape", "mad",
      "nll",  "ppl",   "perplexity", "wer", "cer",  "ter", "brier", "logloss", "distance", "regret"};
  const std::string text = lower(name);
  std::size_t start = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i < text.size() && std::isalnum(static_cast<unsigned char>(text[i])) != 0) continue;
    const std::string_view segment = std::string_view(text).substr(start, i - start);
    if (std::find(lower_is_better.begin(), lower_is_better.end(), segment) != lower_is_better.end())
      return true;
    start = i + 1;
  }
  return false;
}

/// Warns (once per process and name) that `metric`, whose direction HF's rule made "greater is better", looks
/// like an error measure; `lower_is_better` and `greater_is_better` say how to set the direction explicitly.
inline void warn_if_error_measure(const std::string& metric, std::string_view lower_is_better,
                                  std::string_view greater_is_better) {
  if (!looks_like_error_measure(metric)) return;
  log::warning_once(
      "\"{}\" looks like an error measure (lower is better), but it is treated as greater-is-better because "
      "its "
      "name does not end in \"loss\" (Hugging Face's rule): the best checkpoint and early stopping would "
      "favour its "
      "highest values. Set {} if lower is better, or {} to keep this and silence the warning",
      metric, lower_is_better, greater_is_better);
}

}  // namespace torchfit::detail
