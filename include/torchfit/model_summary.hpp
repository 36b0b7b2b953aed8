// SPDX-License-Identifier: MIT
// A model's layers and parameter counts as a table (Keras's model.summary()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

namespace torchfit {

namespace detail {

/// `1234567` as "1,234,567".
inline std::string thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  for (auto i = static_cast<int64_t>(digits.size()) - 3; i > 0; i -= 3)
    digits.insert(static_cast<std::size_t>(i), ",");
  return n < 0 ? "-" + digits : digits;
}

/// Bytes in binary units: "512 B", "37.54 KiB", "1.20 MiB".
inline std::string byte_size(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) bytes /= 1024, ++unit;
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[unit]);
}

/// A module's class without namespace and libtorch's `Impl` suffix: `torch::nn::LinearImpl` -> `Linear`.
inline std::string module_type(const torch::nn::Module& module) {
  std::string name = module.name();
  if (const auto scope = name.rfind("::", name.find('<')); scope != std::string::npos)
    name = name.substr(scope + 2);
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) name.resize(name.size() - 4);
  return name;
}

struct ParameterCount {
  int64_t trainable = 0, frozen = 0;
  double trainable_bytes = 0, frozen_bytes = 0;
  void add(const torch::Tensor& p) {
    const auto bytes = static_cast<double>(p.numel() * static_cast<int64_t>(p.element_size()));
    (p.requires_grad() ? trainable : frozen) += p.numel();
    (p.requires_grad() ? trainable_bytes : frozen_bytes) += bytes;
  }
  int64_t total() const { return trainable + frozen; }
};

inline int64_t parameter_count(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

// Rows "name (Type)" and counts for the children of `module` down to `depth_left` levels, parents first.
inline void summary_rows(const torch::nn::Module& module, const std::string& prefix, int depth_left,
                         std::vector<std::pair<std::string, int64_t>>& rows) {
  for (const auto& child : module.named_children()) {
    rows.emplace_back(fmt::format("{}{} ({})", prefix, child.key(), module_type(*child.value())),
                      parameter_count(*child.value()));
    if (depth_left > 1) summary_rows(*child.value(), prefix + child.key() + ".", depth_left - 1, rows);
  }
}

}  // namespace detail

/// Keras's `model.summary()` for a libtorch module, as text: one row per submodule down to `max_depth` levels
/// (dotted names, each with its type and parameter count including its children's), the model's own
/// parameters, then total, trainable and non-trainable parameter counts with their sizes, and the buffers
/// (running statistics, ...) if any. The Trainer logs it at info level when training starts
/// (TORCHFIT_VERBOSITY=info).
///
///     Model: DigitsNet
///     Layer (type)           Param #
///     ==============================
///     fc1 (Linear)             8,320
///     ...
inline std::string model_summary(const torch::nn::Module& model, int max_depth = 1) {
  std::vector<std::pair<std::string, int64_t>> rows;
  detail::summary_rows(model, "", std::max(1, max_depth), rows);
  for (const auto& p : model.named_parameters(/*recurse=*/false))
    rows.emplace_back(fmt::format("{} (Parameter)", p.key()), p.value().numel());

  detail::ParameterCount params, buffers;
  for (const auto& p : model.parameters(/*recurse=*/true)) params.add(p);
  for (const auto& b : model.buffers(/*recurse=*/true)) buffers.add(b.detach());

  std::size_t name_width = std::string("Layer (type)").size(), count_width = std::string("Param #").size();
  for (const auto& [name, count] : rows) {
    name_width = std::max(name_width, name.size());
    count_width = std::max(count_width, detail::thousands(count).size());
  }
  const std::string rule(name_width + 2 + count_width, '=');
  std::string out = fmt::format("Model: {}\n{:<{}}  {:>{}}\n{}\n", detail::module_type(model), "Layer (type)",
                                name_width, "Param #", count_width, rule);
  for (const auto& [name, count] : rows)
    out += fmt::format("{:<{}}  {:>{}}\n", name, name_width, detail::thousands(count), count_width);
  out += fmt::format("{}\nTotal params: {} ({})\nTrainable params: {} ({})\nNon-trainable params: {} ({})\n",
                     rule, detail::thousands(params.total()),
                     detail::byte_size(params.trainable_bytes + params.frozen_bytes),
                     detail::thousands(params.trainable), detail::byte_size(params.trainable_bytes),
                     detail::thousands(params.frozen), detail::byte_size(params.frozen_bytes));
  if (buffers.total() > 0)
    out += fmt::format("Buffers: {} ({})\n", detail::thousands(buffers.total()),
                       detail::byte_size(buffers.trainable_bytes + buffers.frozen_bytes));
  return out;
}

}  // namespace torchfit
