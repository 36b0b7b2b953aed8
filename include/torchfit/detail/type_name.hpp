// SPDX-License-Identifier: MIT
#pragma once

#include <cstdlib>
#include <memory>
#include <string>
#include <typeinfo>

#include <cxxabi.h>

namespace torchfit::detail {

/// Demangled name of a type without its namespace:
/// `torchfit::EarlyStoppingCallback` -> `EarlyStoppingCallback` (HF shows `__class__.__name__`).
inline std::string short_type_name(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  std::string full = status == 0 && demangled ? demangled.get() : type.name();
  // Strip the namespace of the outermost name only; keep template arguments as written.
  const auto template_open = full.find('<');
  const auto last_scope = full.rfind("::", template_open);
  return last_scope == std::string::npos ? full : full.substr(last_scope + 2);
}

}  // namespace torchfit::detail
