// SPDX-License-Identifier: MIT
// Small pieces the file- and server-based trackers share: environment switches, random ids, clocks, user
// name, and a YAML block emitter for the flat documents trackers write (MLflow meta.yaml, DVCLive
// params.yaml).
#pragma once

#include <pwd.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/strings.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// The value of environment variable `name`; nothing when it is unset or empty.
inline std::optional<std::string> env_string(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

/// HF's switch test: the variable, upper-cased, is one of 1, ON, YES, TRUE (ENV_VARS_TRUE_VALUES).
inline bool env_true(const char* name) {
  const auto value = env_string(name);
  if (!value) return false;
  const std::string l = lower(*value);
  return l == "1" || l == "on" || l == "yes" || l == "true";
}

/// The number in environment variable `name`; nothing when it is unset or empty. Text that is not a number is
/// an ArgumentError naming the variable.
inline std::optional<double> env_number(const char* name) {
  const auto text = env_string(name);
  if (!text) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(text->c_str(), &end);
  if (end != text->c_str() + text->size())
    throw ArgumentError(fmt::format("{} must be a number (got \"{}\")", name, *text));
  return v;
}

/// Python's `str(value)` of a logged value: strings as they are, anything else as its repr (`5e-05`, `True`,
/// `None`, `['none']`).
inline std::string python_str(const json& value) {
  return value.is_string() ? value.get<std::string>() : python_repr(value);
}

/// Python's `type(value)` text of a JSON value (`<class 'str'>`, ...), for HF's dropped-value warnings.
inline std::string python_type_repr(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "<class 'NoneType'>";
    case json::value_t::boolean:
      return "<class 'bool'>";
    case json::value_t::number_float:
      return "<class 'float'>";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "<class 'int'>";
    case json::value_t::string:
      return "<class 'str'>";
    case json::value_t::array:
      return "<class 'list'>";
    case json::value_t::object:
      return "<class 'dict'>";
    default:
      return "<class 'bytes'>";
  }
}

/// Nested objects of `object` as flat keys joined by `delimiter` (`outer.inner`), each under `prefix` when it
/// is not empty; empty nested objects disappear (HF's flatten_dict, comet_ml's flatten_nested).
inline void flatten_json(const json& object, const std::string& prefix, const std::string& delimiter,
                         json& out) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + delimiter + it.key();
    if (it.value().is_object())
      flatten_json(it.value(), key, delimiter, out);
    else
      out[key] = it.value();
  }
}

/// `count` random lower-case hex digits from the operating system's entropy source.
inline std::string random_hex(std::size_t count) {
  static thread_local std::mt19937_64 engine{[] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }()};
  std::string out;
  while (out.size() < count) out += fmt::format("{:016x}", engine());
  out.resize(count);
  return out;
}

/// A random (version 4) UUID as 32 hex digits without dashes (Python's `uuid.uuid4().hex`).
inline std::string uuid4_hex() {
  std::string hex = random_hex(32);
  hex[12] = '4';
  hex[16] = "89ab"[std::stoi(hex.substr(16, 1), nullptr, 16) & 3];
  return hex;
}

/// A random UUID in its dashed form (Python's `str(uuid.uuid4())`).
inline std::string uuid4() {
  const std::string h = uuid4_hex();
  return h.substr(0, 8) + '-' + h.substr(8, 4) + '-' + h.substr(12, 4) + '-' + h.substr(16, 4) + '-' +
         h.substr(20);
}

/// Milliseconds since the Unix epoch (MLflow's timestamps).
inline std::int64_t unix_time_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// `when` in UTC as `%Y-%m-%dT%H:%M:%S`, and the microseconds past that second.
inline std::pair<std::string, std::int64_t> utc_stamp(std::chrono::system_clock::time_point when) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(when);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  return {stamp,
          std::chrono::duration_cast<std::chrono::microseconds>(when.time_since_epoch()).count() % 1000000};
}

/// Python's `datetime.now(timezone.utc).isoformat()`: `2026-11-24T05:58:16.123456+00:00` (the fraction is
/// left out when it is zero, as Python does).
inline std::string iso_utc_now() {
  const auto [stamp, micros] = utc_stamp(std::chrono::system_clock::now());
  return micros == 0 ? fmt::format("{}+00:00", stamp) : fmt::format("{}.{:06d}+00:00", stamp, micros);
}

/// The login name of this process's user ($USER, else the password database, else "unknown").
inline std::string user_name() {
  if (auto user = env_string("USER")) return *user;
  if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_name != nullptr) return pw->pw_name;
  return "unknown";
}

/// The path of the running program (what MLflow records as the source name).
inline std::string program_path() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<std::size_t>(n)) : std::string();
}

/// A YAML scalar as PyYAML / ruamel write it in block documents: strings plain when they read back as the
/// same string, else single-quoted (double-quoted with escapes when they hold control characters); floats
/// with a dot before any exponent (`5.0e-05`, which YAML 1.1 and 1.2 both read as a float), `.inf`, `.nan`;
/// `null_text` for null (PyYAML writes `null`, ruamel an empty value).
inline std::string yaml_scalar(const json& value, std::string_view null_text = "null") {
  switch (value.type()) {
    case json::value_t::null:
      return std::string(null_text);
    case json::value_t::boolean:
      return value.get<bool>() ? "true" : "false";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return value.dump();
    case json::value_t::number_float: {
      const double v = value.get<double>();
      if (std::isnan(v)) return ".nan";
      if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
      std::string text = python_float_repr(v);
      if (text.find('.') == std::string::npos && text.find('e') != std::string::npos)
        text.replace(text.find('e'), 1, ".0e");
      return text;
    }
    case json::value_t::string:
      break;
    default:
      return value.dump();  // lists and objects inside a scalar position: their JSON text is valid flow YAML
  }
  const std::string& s = value.get_ref<const std::string&>();
  bool control = false;
  for (const unsigned char c : s) control = control || c < 0x20 || c == 0x7F;
  if (control) {
    std::string out;
    append_json_string(out, s);  // JSON escapes are valid in YAML double-quoted scalars
    return out;
  }
  const std::string l = lower(s);
  const bool reserved_word = l == "null" || l == "~" || l == "true" || l == "false" || l == "yes" ||
                             l == "no" || l == "on" || l == "off" || l == "y" || l == "n" || l == ".inf" ||
                             l == "-.inf" || l == "+.inf" || l == ".nan";
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  const bool numeric = !s.empty() && end == s.c_str() + s.size();
  const bool special_start =
      !s.empty() && std::string_view("-?:,[]{}#&*!|>'\"%@`").find(s[0]) != std::string::npos;
  const bool needs_quotes = s.empty() || reserved_word || numeric || special_start || s.front() == ' ' ||
                            s.back() == ' ' || s.back() == ':' || s.find(": ") != std::string::npos ||
                            s.find(" #") != std::string::npos;
  if (!needs_quotes) return s;
  std::string out = "'";
  for (const char c : s) out.append(c == '\'' ? 2 : 1, c);
  return out + "'";
}

/// A JSON object as a block-style YAML mapping (keys in the object's order, nested objects indented by two,
/// lists as `- item` lines at the key's indentation, empty ones as `[]` / `{}`).
inline std::string yaml_block(const json& object, std::string_view null_text = "null", int indent = 0) {
  std::string out;
  const std::string pad(static_cast<std::size_t>(indent), ' ');
  for (auto it = object.begin(); it != object.end(); ++it) {
    const json& v = it.value();
    const std::string key = yaml_scalar(json(it.key()));
    if (v.is_object() && !v.empty()) {
      out += pad + key + ":\n" + yaml_block(v, null_text, indent + 2);
    } else if (v.is_array() && !v.empty()) {
      out += pad + key + ":\n";
      for (const json& item : v)
        out += pad + "- " +
               (item.is_structured() && !item.empty() ? item.dump() : yaml_scalar(item, null_text)) + "\n";
    } else if (v.is_structured()) {
      out += pad + key + ": " + (v.is_array() ? "[]" : "{}") + "\n";
    } else {
      const std::string scalar = yaml_scalar(v, null_text);
      out += pad + key + (scalar.empty() ? ":" : ": " + scalar) + "\n";
    }
  }
  return out;
}

}  // namespace torchfit::detail
