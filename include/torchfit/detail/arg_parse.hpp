// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/strings.hpp"
#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

// How TrainingArguments values travel between command-line text, JSON and help text: one codec per value
// type, so the field table names a member once and gets parsing, serialisation and documentation from its
// type.
namespace torchfit::detail {

/// Names of an enum's values, indexed by the underlying value; specialised next to each enum.
template <class E>
struct EnumNames;

template <class T>
inline constexpr bool is_optional_v = false;
template <class T>
inline constexpr bool is_optional_v<std::optional<T>> = true;

/// A value as it appears in a message: a JSON string literal, so empty strings and spaces stay visible
/// (invalid UTF-8, possible in argv, shown as U+FFFD rather than failing).
inline std::string as_literal(std::string_view text) {
  return json(std::string(text)).dump(-1, ' ', false, json::error_handler_t::replace);
}

template <class Names>
std::string join_quoted(const Names& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + as_literal(name);
  return out;
}

template <class Names>
bool contains(const Names& names, std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

/// Throws ArgumentError with `message` (formatted only when `ok` is false).
template <class... Args>
void require(bool ok, fmt::format_string<Args...> message, Args&&... args) {
  if (!ok) throw ArgumentError(fmt::format(message, std::forward<Args>(args)...));
}

[[noreturn]] inline void bad_value(std::string_view where, std::string_view expected,
                                   const std::string& got) {
  throw ArgumentError(fmt::format("{} expects {} (got {})", where, expected, got));
}

/// HF's `string_to_bool` words, case-insensitive; nullopt for anything else.
inline std::optional<bool> bool_word(std::string_view text) {
  const std::string word = lower(text);
  if (word == "true" || word == "yes" || word == "t" || word == "y" || word == "1") return true;
  if (word == "false" || word == "no" || word == "f" || word == "n" || word == "0") return false;
  return std::nullopt;
}

inline bool none_word(std::string_view text) { return lower(text) == "none"; }

/// Parses all of `text` as a T (from_chars: no spaces, no trailing characters; a leading '+' is allowed as in
/// Python); nullopt when it is not one.
template <class T>
std::optional<T> parse_number(std::string_view text) {
  if (text.size() > 1 && text[0] == '+' && text[1] != '-') text.remove_prefix(1);
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// ---- codecs: type() for help, parse() from command-line text, to_json() / from_json() ----
// `where` names the value in messages: "--max_steps" on the command line, `field "max_steps"` in JSON.

template <class T, class = void>
struct Codec;

template <>
struct Codec<bool> {
  using value_type = bool;
  static std::string type() { return "bool"; }
  static bool parse(std::string_view where, const std::string& text) {
    if (const auto value = bool_word(text)) return *value;
    bad_value(where, "true or false", as_literal(text));
  }
  static json to_json(bool value) { return value; }
  static bool from_json(std::string_view where, const json& j) {
    if (!j.is_boolean()) bad_value(where, "true or false", j.dump());
    return j.get<bool>();
  }
};

template <>
struct Codec<int64_t> {
  using value_type = int64_t;
  static std::string type() { return "int"; }
  static int64_t parse(std::string_view where, const std::string& text) {
    if (const auto value = parse_number<int64_t>(text)) return *value;
    bad_value(where, "an integer", as_literal(text));
  }
  static json to_json(int64_t value) { return value; }
  static int64_t from_json(std::string_view where, const json& j) {
    if (!j.is_number_integer() ||
        (j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
      bad_value(where, "an integer", j.dump());
    return j.get<int64_t>();
  }
};

template <>
struct Codec<double> {
  using value_type = double;
  static std::string type() { return "float"; }
  static double parse(std::string_view where, const std::string& text) {
    if (const auto value = parse_number<double>(text)) return *value;
    bad_value(where, "a number", as_literal(text));
  }
  static json to_json(double value) { return value; }
  static double from_json(std::string_view where, const json& j) {
    if (!j.is_number()) bad_value(where, "a number", j.dump());
    return j.get<double>();
  }
};

/// A `*_steps` value: a step count, or a ratio of max_steps below 1. Whole counts above 1 are written as JSON
/// integers, as HF's __post_init__ converts them to int before its to_json_string.
struct StepsCodec : Codec<double> {
  static json to_json(double value) {
    if (value > 1 && value == std::floor(value) && value < 9.0e18) return static_cast<int64_t>(value);
    return value;
  }
};

template <>
struct Codec<std::string> {
  using value_type = std::string;
  static std::string type() { return "str"; }
  static std::string parse(std::string_view, const std::string& text) { return text; }
  static json to_json(const std::string& value) { return value; }
  static std::string from_json(std::string_view where, const json& j) {
    if (!j.is_string()) bad_value(where, "a string", j.dump());
    return j.get<std::string>();
  }
};

/// A list of names: comma-separated on the command line (`--report_to tensorboard,csv`), a JSON array in
/// files (a single JSON string is read as a one-element list, as HF accepts).
template <>
struct Codec<std::vector<std::string>> {
  using value_type = std::vector<std::string>;
  static std::string type() { return "list[str]"; }
  static value_type parse(std::string_view, const std::string& text) {
    value_type items;
    size_t begin = 0;
    while (true) {
      const size_t comma = std::min(text.find(',', begin), text.size());
      std::string item = text.substr(begin, comma - begin);
      item.erase(0, item.find_first_not_of(' '));
      item.erase(item.find_last_not_of(' ') + 1);
      items.push_back(std::move(item));
      if (comma == text.size()) return items;
      begin = comma + 1;
    }
  }
  static json to_json(const value_type& value) { return value; }
  static value_type from_json(std::string_view where, const json& j) {
    if (j.is_string()) return {j.get<std::string>()};
    const bool all_strings =
        j.is_array() && std::all_of(j.begin(), j.end(), [](const json& e) { return e.is_string(); });
    if (!all_strings) bad_value(where, "a list of strings", j.dump());
    return j.get<value_type>();
  }
};

/// A JSON object (lr_scheduler_kwargs), given on the command line as JSON text.
template <>
struct Codec<json> {
  using value_type = json;
  static std::string type() { return "json"; }
  static json parse(std::string_view where, const std::string& text) {
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded() || !value.is_object())
      bad_value(where, "a JSON object such as '{\"power\": 2}'", as_literal(text));
    return value;
  }
  static json to_json(const json& value) { return value; }
  static json from_json(std::string_view where, const json& j) {
    if (!j.is_object()) bad_value(where, "a JSON object", j.dump());
    return j;
  }
};

/// An enum, by the names EnumNames<E> lists (HF's enum values).
template <class E>
struct Codec<E, std::enable_if_t<std::is_enum_v<E>>> {
  using value_type = E;
  static std::string type() {
    std::string names;
    for (const char* name : EnumNames<E>::values) names += (names.empty() ? "" : ",") + std::string(name);
    return "{" + names + "}";
  }
  static E parse(std::string_view where, const std::string& text) {
    const auto& names = EnumNames<E>::values;
    const auto it = std::find(names.begin(), names.end(), std::string_view(text));
    if (it == names.end()) bad_value(where, "one of " + join_quoted(names), as_literal(text));
    return static_cast<E>(it - names.begin());
  }
  static json to_json(E value) { return EnumNames<E>::values.at(static_cast<size_t>(value)); }
  static E from_json(std::string_view where, const json& j) {
    if (!j.is_string()) bad_value(where, "one of " + join_quoted(EnumNames<E>::values), j.dump());
    return parse(where, j.get<std::string>());
  }
};

/// An optional value: `none` / `None` on the command line and null in JSON mean "not set".
template <class Inner>
struct OptionalCodec {
  using value_type = std::optional<typename Inner::value_type>;
  static std::string type() { return Inner::type() + "|none"; }
  static value_type parse(std::string_view where, const std::string& text) {
    if (none_word(text)) return std::nullopt;
    return Inner::parse(where, text);
  }
  static json to_json(const value_type& value) { return value ? Inner::to_json(*value) : json(nullptr); }
  static value_type from_json(std::string_view where, const json& j) {
    if (j.is_null()) return std::nullopt;
    return Inner::from_json(where, j);
  }
};

template <class T>
struct Codec<std::optional<T>> : OptionalCodec<Codec<T>> {};

/// How a JSON value reads in help text: strings bare, null as None, floats as Python prints them.
inline std::string help_value(const json& value) {
  if (value.is_string()) return value.get<std::string>().empty() ? "\"\"" : value.get<std::string>();
  if (value.is_null()) return "None";
  if (value.is_number_float()) return python_float_repr(value.get<double>());
  if (value.is_array()) {
    std::string out;
    for (const auto& item : value) out += (out.empty() ? "" : ",") + help_value(item);
    return out;
  }
  return value.dump();
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo; empty otherwise.
template <class Names>
std::string closest_name(std::string_view name, const Names& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, name.size() / 4) + 1;
  for (const auto& candidate : candidates) {
    const std::string_view c = candidate;
    std::vector<size_t> row(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= name.size(); ++i) {
      size_t diagonal = row[0]++;
      for (size_t j = 1; j <= c.size(); ++j)
        diagonal = std::exchange(
            row[j], std::min({row[j] + 1, row[j - 1] + 1, diagonal + (name[i - 1] != c[j - 1])}));
    }
    if (row.back() < best_distance) best_distance = row.back(), best = std::string(c);
  }
  return best;
}

/// HF's `default_logdir()`: `runs/<%b%d_%H-%M-%S>_<hostname>`, the time in local time.
inline std::string default_logdir() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%b%d_%H-%M-%S", &local);
  return (std::filesystem::path("runs") / (std::string(stamp) + "_" + host_name())).string();
}

}  // namespace torchfit::detail
