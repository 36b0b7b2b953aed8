// SPDX-License-Identifier: MIT
// DVCLive's names, values and file formats: metric names as its HF integration standardises them, TSV cells,
// the nested metrics.json summary.
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <utility>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// dvclive's `standardize_metric_name(key, "dvclive.huggingface")`: every `train_` becomes `train/` and every
/// `eval_` becomes `eval/` (plain replacement, so `train_runtime` -> `train/runtime`).
inline std::string dvclive_metric_name(std::string key) {
  for (const auto& [from, to] :
       {std::pair<std::string_view, std::string_view>{"train_", "train/"}, {"eval_", "eval/"}})
    for (std::size_t i = key.find(from); i != std::string::npos; i = key.find(from, i + to.size()))
      key.replace(i, from.size(), to);
  return key;
}

/// The value DVCLive logs: numbers and strings as they are, NaN and infinities as Python's `str()` of them.
inline json dvclive_value(const json& value) {
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (std::isnan(v) || std::isinf(v)) return python_float_repr(v);
  }
  return value;
}

/// A TSV cell as Python's csv module writes `str(value)` with a tab delimiter (quoted only when it holds a
/// tab, a double quote or a line break).
inline std::string dvclive_tsv_cell(const json& value) {
  std::string text;
  if (value.is_string())
    text = value.get<std::string>();
  else if (value.is_boolean())
    text = value.get<bool>() ? "True" : "False";
  else if (value.is_number_float())
    text = python_float_repr(value.get<double>());
  else
    text = value.dump();
  if (text.find_first_of("\t\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (const char c : text) out.append(c == '"' ? 2 : 1, c);
  return out + "\"";
}

/// Sets `value` at the `/`-separated `name` in a nested summary object (DVCLive's set_in).
inline void dvclive_set_in(json& summary, const std::string& name, const json& value) {
  json* node = &summary;
  std::size_t start = 0;
  for (std::size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', start)) {
    json& child = (*node)[name.substr(start, slash - start)];
    if (!child.is_object()) child = json::object();
    node = &child;
    start = slash + 1;
  }
  (*node)[name.substr(start)] = value;
}

/// Whether DVCLive accepts the value as a metric (Python int, float, str; bool is an int).
inline bool dvclive_can_log(const json& value) {
  return value.is_number() || value.is_boolean() || value.is_string();
}

}  // namespace torchfit::detail
