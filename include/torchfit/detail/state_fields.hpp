// SPDX-License-Identifier: MIT
// Typed reads of the members of a state saved in a checkpoint (scheduler, loss scaler, loss bookkeeping): a
// missing member or one of the wrong type throws CheckpointError naming the state and the member.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

// A value for a message: numbers as written, anything else by its kind (a corrupt file can hold megabytes).
inline std::string kind_of(const json& value) {
  if (value.is_number() || value.is_boolean() || value.is_null()) return value.dump();
  return std::string("a JSON ") + value.type_name();
}

/// `state[key]`; `what` names the state in messages ("scheduler state", a file's path).
inline const json& state_member(const json& state, const std::string& what, const char* key) {
  if (!state.is_object())
    throw CheckpointError(fmt::format("{} must be a JSON object (got {})", what, kind_of(state)));
  const auto found = state.find(key);
  if (found == state.end()) throw CheckpointError(fmt::format("{} has no \"{}\"", what, key));
  return *found;
}

[[noreturn]] inline void throw_wrong_member(const std::string& what, const char* key, const char* expected,
                                            const json& value) {
  throw CheckpointError(fmt::format("{}: \"{}\" must be {} (got {})", what, key, expected, kind_of(value)));
}

inline int64_t integer_member(const json& state, const std::string& what, const char* key) {
  const json& value = state_member(state, what, key);
  if (!value.is_number_integer() ||
      (value.is_number_unsigned() &&
       value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
    throw_wrong_member(what, key, "an integer", value);
  return value.get<int64_t>();
}

inline double number_member(const json& state, const std::string& what, const char* key) {
  const json& value = state_member(state, what, key);
  if (!value.is_number()) throw_wrong_member(what, key, "a number", value);
  return value.get<double>();
}

inline std::vector<double> numbers_member(const json& state, const std::string& what, const char* key) {
  const json& value = state_member(state, what, key);
  std::vector<double> out;
  if (!value.is_array()) throw_wrong_member(what, key, "a list of numbers", value);
  for (const json& item : value) {
    if (!item.is_number()) throw_wrong_member(what, key, "a list of numbers", value);
    out.push_back(item.get<double>());
  }
  return out;
}

}  // namespace torchfit::detail
