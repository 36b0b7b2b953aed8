// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

// Python's text forms of values, so that files and console lines match what HF writes byte for byte:
// repr(float), repr(dict), json.dumps(..., indent=2, sort_keys=True), and json.loads with NaN / Infinity.
namespace torchfit::detail {

/// Python's `repr(float)`: the shortest digits that round-trip, in exponent form when the decimal exponent is
/// below -4 or at least 16 (`1e-05`, `1e+16`), else positional with at least one decimal (`2.0`, `0.0001`);
/// `nan`, `inf`, `-inf`.
inline std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in the form [-]d[.ddd]e(+|-)XX, then laid out as Python does.
  char buffer[40];
  const auto end = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific).ptr;
  std::string_view sci(buffer, static_cast<size_t>(end - buffer));
  std::string out;
  if (sci.front() == '-') {
    out += '-';
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits(1, sci[0]);
  if (e > 1) digits.append(sci.substr(2, e - 2));
  int exponent = 0;
  std::from_chars(sci.data() + e + 2, sci.data() + sci.size(), exponent);
  if (sci[e + 1] == '-') exponent = -exponent;

  const int n = static_cast<int>(digits.size());
  if (exponent < -4 || exponent >= 16) {
    out += digits[0];
    if (n > 1) out.append(".").append(digits, 1);
    out += fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  } else if (exponent < 0) {
    out.append("0.").append(static_cast<size_t>(-exponent - 1), '0').append(digits);
  } else if (n <= exponent + 1) {
    out.append(digits).append(static_cast<size_t>(exponent + 1 - n), '0').append(".0");
  } else {
    out.append(digits, 0, static_cast<size_t>(exponent + 1))
        .append(".")
        .append(digits, static_cast<size_t>(exponent + 1));
  }
  return out;
}

/// Marks a byte sequence that is not valid UTF-8 (Python strings cannot hold one).
constexpr char32_t invalid_code_point = 0xFFFFFFFF;

/// Decodes the UTF-8 code point starting at `text[i]` and moves `i` past it; on an invalid, overlong or
/// surrogate sequence returns `invalid_code_point` and moves `i` one byte.
inline char32_t next_code_point(std::string_view text, size_t& i) {
  static constexpr char32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};  // shorter forms are overlong
  const auto lead = static_cast<unsigned char>(text[i]);
  const size_t length = lead < 0x80           ? 1
                        : (lead >> 5) == 0x6  ? 2
                        : (lead >> 4) == 0xE  ? 3
                        : (lead >> 3) == 0x1E ? 4
                                              : 0;
  char32_t cp = length == 1 ? lead : lead & (0x7F >> length);
  bool valid = length > 0 && i + length <= text.size();
  for (size_t k = 1; valid && k < length; ++k) {
    const auto next = static_cast<unsigned char>(text[i + k]);
    valid = (next & 0xC0) == 0x80;
    cp = (cp << 6) | (next & 0x3F);
  }
  valid = valid && cp >= smallest[length] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
  i += valid ? length : 1;
  return valid ? cp : invalid_code_point;
}

/// Appends the UTF-8 encoding of a (valid, non-surrogate) code point.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Decodes a whole string; throws torchfit::Error on invalid UTF-8, which has no Python `str` equivalent.
inline std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    const size_t at = i;
    const char32_t cp = next_code_point(text, i);
    if (cp == invalid_code_point)
      throw Error(fmt::format("string {:?} is not valid UTF-8 (byte {}); Python cannot represent it",
                              std::string(text.substr(0, 40)), at));
    out += cp;
  }
  return out;
}

// JSON's two-character escapes (all of them but `\/`, which Python never writes): character, letter.
constexpr std::pair<char, char> json_short_escapes[] = {{'"', '"'},  {'\\', '\\'}, {'\n', 'n'}, {'\r', 'r'},
                                                        {'\t', 't'}, {'\b', 'b'},  {'\f', 'f'}};

/// A JSON string as Python's json.dumps writes it with ensure_ascii=True.
inline void append_json_string(std::string& out, std::string_view text) {
  out += '"';
  for (const char32_t cp : decode_utf8(text)) {
    const auto named = std::find_if(std::begin(json_short_escapes), std::end(json_short_escapes),
                                    [&](const auto& e) { return static_cast<char32_t>(e.first) == cp; });
    if (named != std::end(json_short_escapes)) {
      out.append({'\\', named->second});
    } else if (cp >= 0x20 && cp <= 0x7E) {
      out += static_cast<char>(cp);
    } else if (cp < 0x10000) {
      out += fmt::format("\\u{:04x}", static_cast<uint32_t>(cp));
    } else {  // a UTF-16 surrogate pair, as Python escapes astral characters
      const uint32_t v = static_cast<uint32_t>(cp) - 0x10000;
      out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
    }
  }
  out += '"';
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`; printable non-ASCII kept as is.
/// (Python's Unicode printability table is approximated: only C0/C1 controls and DEL are escaped.)
inline void append_python_str_repr(std::string& out, std::string_view text) {
  const bool double_quoted =
      text.find('\'') != std::string_view::npos && text.find('"') == std::string_view::npos;
  const char quote = double_quoted ? '"' : '\'';
  out += quote;
  for (const char32_t cp : decode_utf8(text)) {
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
      out += fmt::format("\\x{:02x}", static_cast<uint32_t>(cp));
    } else {
      append_utf8(out, cp);
    }
  }
  out += quote;
}

/// Python's json float form: repr for finite values, bare NaN / Infinity / -Infinity otherwise.
inline std::string python_json_float(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return python_float_repr(value);
}

/// The members of an object in output order: as inserted, or by code point (= UTF-8 byte order) like
/// sort_keys.
inline std::vector<std::pair<const std::string*, const json*>> object_items(const json& object,
                                                                            bool sort_keys) {
  std::vector<std::pair<const std::string*, const json*>> items;
  for (auto it = object.begin(); it != object.end(); ++it) items.emplace_back(&it.key(), &it.value());
  if (sort_keys)
    std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return *a.first < *b.first; });
  return items;
}

[[noreturn]] inline void throw_no_python_equivalent(const json& value) {
  throw Error(fmt::format("a JSON {} value has no Python equivalent", value.type_name()));
}

/// How a Python value is spelt: by json.dumps or by repr(). Both share the layout of lists and dicts.
struct PythonSyntax {
  const char* null_word;
  const char* true_word;
  const char* false_word;
  std::string (*float_text)(double);
  void (*append_string)(std::string&, std::string_view);
  int indent;  // < 0: one line with ", " between items (Python's indent=None)
  bool sort_keys;
};

inline void append_python_value(std::string& out, const json& value, const PythonSyntax& syntax, int level) {
  // An integer indent breaks lines and separates items with ","; no indent keeps one line with ", ".
  const auto newline = [&](int depth) {
    if (syntax.indent >= 0) out.append("\n").append(static_cast<size_t>(syntax.indent * depth), ' ');
  };
  const char* separator = syntax.indent >= 0 ? "," : ", ";
  switch (value.type()) {
    case json::value_t::null:
      out += syntax.null_word;
      break;
    case json::value_t::boolean:
      out += value.get<bool>() ? syntax.true_word : syntax.false_word;
      break;
    case json::value_t::number_integer:
      out += std::to_string(value.get<int64_t>());
      break;
    case json::value_t::number_unsigned:
      out += std::to_string(value.get<uint64_t>());
      break;
    case json::value_t::number_float:
      out += syntax.float_text(value.get<double>());
      break;
    case json::value_t::string:
      syntax.append_string(out, value.get_ref<const std::string&>());
      break;
    case json::value_t::array: {
      if (value.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (size_t i = 0; i < value.size(); ++i) {
        if (i > 0) out += separator;
        newline(level + 1);
        append_python_value(out, value[i], syntax, level + 1);
      }
      newline(level);
      out += ']';
      break;
    }
    case json::value_t::object: {
      if (value.empty()) {
        out += "{}";
        break;
      }
      out += '{';
      bool first = true;
      for (const auto& [key, member] : object_items(value, syntax.sort_keys)) {
        if (!first) out += separator;
        first = false;
        newline(level + 1);
        syntax.append_string(out, *key);
        out += ": ";
        append_python_value(out, *member, syntax, level + 1);
      }
      newline(level);
      out += '}';
      break;
    }
    case json::value_t::binary:
    case json::value_t::discarded:
      throw_no_python_equivalent(value);
  }
}

/// What Python's `json.dumps(value, indent=indent, sort_keys=sort_keys)` returns (ensure_ascii, NaN allowed).
/// A negative indent stands for Python's `indent=None` (one line, `", "` between items).
inline std::string python_json_dumps(const json& value, int indent = 2, bool sort_keys = true) {
  std::string out;
  append_python_value(
      out, value,
      PythonSyntax{"null", "true", "false", python_json_float, append_json_string, indent, sort_keys}, 0);
  return out;
}

/// Python's `repr()` of the equivalent dict / list / str / number / bool / None, keys in insertion order:
/// `{'loss': 0.5824, 'learning_rate': 0.0005, 'epoch': 19.5}` (how HF prints logs).
inline std::string python_repr(const json& value) {
  std::string out;
  append_python_value(
      out, value, PythonSyntax{"None", "True", "False", python_float_repr, append_python_str_repr, -1, false},
      0);
  return out;
}

/// A recursive-descent reader for what Python's json module writes and reads: strict JSON plus the bare
/// tokens NaN, Infinity and -Infinity (which nlohmann's parser rejects). Integers stay integers, floats stay
/// floats.
class PythonJsonParser {
 public:
  PythonJsonParser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  json parse_document() {
    json value = parse_value(0);
    skip_whitespace();
    if (pos_ < text_.size()) fail("extra data after the JSON value");
    return value;
  }

 private:
  // Python's json gives up at its recursion limit (1000); so do we, instead of overflowing the stack.
  static constexpr int max_depth = 1000;

  [[noreturn]] void fail(std::string_view problem) const {
    const size_t at = std::min(pos_, text_.size());
    const std::string_view before = text_.substr(0, at);
    const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
    const size_t line_start = before.rfind('\n');
    const size_t column = at - (line_start == std::string_view::npos ? 0 : line_start + 1) + 1;
    const std::string found =
        at >= text_.size() ? "the end of the input (is the file truncated?)" : fmt::format("{:?}", text_[at]);
    throw FormatError(fmt::format("{}: malformed JSON at line {} column {}: {}, found {}", source_, line,
                                  column, problem, found));
  }

  void skip_whitespace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool consume(std::string_view token) {
    if (text_.substr(pos_, token.size()) != token) return false;
    pos_ += token.size();
    return true;
  }

  json parse_value(int depth) {
    skip_whitespace();
    if (depth > max_depth) fail(fmt::format("nesting deeper than {} levels", max_depth));
    if (pos_ >= text_.size()) fail("expected a value");
    switch (text_[pos_]) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return parse_string();
      default:
        break;
    }
    if (consume("true")) return true;
    if (consume("false")) return false;
    if (consume("null")) return nullptr;
    if (consume("NaN")) return std::numeric_limits<double>::quiet_NaN();
    if (consume("Infinity")) return std::numeric_limits<double>::infinity();
    if (consume("-Infinity")) return -std::numeric_limits<double>::infinity();
    return parse_number();
  }

  json parse_object(int depth) {
    ++pos_;
    json object = json::object();
    skip_whitespace();
    if (consume("}")) return object;
    for (;;) {
      skip_whitespace();
      if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a string key");
      std::string key = parse_string();
      skip_whitespace();
      if (!consume(":")) fail("expected ':' after an object key");
      // A repeated key keeps its first place and its last value, as in Python.
      object[key] = parse_value(depth + 1);
      skip_whitespace();
      if (consume("}")) return object;
      if (!consume(",")) fail("expected ',' or '}' after an object member");
    }
  }

  json parse_array(int depth) {
    ++pos_;
    json array = json::array();
    skip_whitespace();
    if (consume("]")) return array;
    for (;;) {
      array.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (consume("]")) return array;
      if (!consume(",")) fail("expected ',' or ']' after an array element");
    }
  }

  uint32_t parse_hex4() {
    uint32_t v = 0;
    const auto r =
        std::from_chars(text_.data() + pos_, text_.data() + std::min(pos_ + 4, text_.size()), v, 16);
    if (r.ec != std::errc{} || r.ptr != text_.data() + pos_ + 4) fail("expected 4 hex digits after \\u");
    pos_ += 4;
    return v;
  }

  std::string parse_string() {
    ++pos_;
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const size_t start = pos_;
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string (must be escaped)");
      if (c != '\\') {
        if (next_code_point(text_, pos_) == invalid_code_point) {
          pos_ = start;
          fail("invalid UTF-8 in a string");
        }
        out.append(text_.substr(start, pos_ - start));
      } else if (consume("\\/")) {
        out += '/';
      } else if (consume("\\u")) {
        out += parse_unicode_escape(start);
      } else {
        const char letter = pos_ + 1 < text_.size() ? text_[pos_ + 1] : '\0';
        const auto named = std::find_if(std::begin(json_short_escapes), std::end(json_short_escapes),
                                        [&](const auto& e) { return e.second == letter; });
        if (named == std::end(json_short_escapes)) fail("invalid escape in a string");
        out += named->first;
        pos_ += 2;
      }
    }
  }

  // After `\u`: one code point as UTF-8, combining a surrogate pair (`start` is where the escape began).
  std::string parse_unicode_escape(size_t start) {
    char32_t cp = parse_hex4();
    if (cp >= 0xD800 && cp <= 0xDBFF && consume("\\u")) {
      const uint32_t low = parse_hex4();
      cp = low >= 0xDC00 && low <= 0xDFFF ? 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00) : 0xD800;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) {  // Python keeps lone surrogates; UTF-8 cannot hold them
      pos_ = start;
      fail("unpaired UTF-16 surrogate in a \\u escape");
    }
    std::string utf8;
    append_utf8(utf8, cp);
    return utf8;
  }

  // Python's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?
  json parse_number() {
    const size_t start = pos_;
    const auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    consume("-");
    const size_t int_start = pos_;
    const size_t int_digits = digits();
    if (int_digits == 0) {
      pos_ = start;
      fail("expected a value");
    }
    if (int_digits > 1 && text_[int_start] == '0') {
      pos_ = int_start;
      fail("a number must not have leading zeros");
    }
    bool is_float = false;
    if (consume(".")) {
      is_float = true;
      if (digits() == 0) fail("expected digits after the decimal point");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      is_float = true;
      ++pos_;
      if (!consume("+")) consume("-");
      if (digits() == 0) fail("expected digits in the exponent");
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    const char* first = literal.data();
    const char* last = first + literal.size();
    if (!is_float) {
      // Python ints are unbounded; ours fall back to uint64, then (like nlohmann) to a float.
      if (int64_t i = 0; std::from_chars(first, last, i).ec == std::errc{}) return i;
      if (uint64_t u = 0; literal[0] != '-' && std::from_chars(first, last, u).ec == std::errc{}) return u;
    }
    double d = 0;
    if (std::from_chars(first, last, d).ec == std::errc::result_out_of_range) d = saturated(literal);
    return d;
  }

  // std::from_chars leaves the value unset when a literal over- or underflows, where Python's float() gives
  // ±inf or ±0.0. Such a literal is far from 1, so the place of its first significant digit tells which.
  static double saturated(std::string_view literal) {
    const bool negative = literal[0] == '-';
    const size_t e = std::min(literal.find_first_of("eE"), literal.size());
    const std::string_view mantissa = literal.substr(negative ? 1 : 0, e - (negative ? 1 : 0));
    int64_t exponent = 0;
    if (e < literal.size()) {
      const char* p = literal.data() + e + 1 + (literal[e + 1] == '+' ? 1 : 0);
      if (std::from_chars(p, literal.data() + literal.size(), exponent).ec != std::errc{})
        exponent = *p == '-' ? -(int64_t{1} << 40) : int64_t{1} << 40;
    }
    const auto point = static_cast<int64_t>(std::min(mantissa.find('.'), mantissa.size()));
    const auto significant = static_cast<int64_t>(mantissa.find_first_not_of("0."));
    const int64_t magnitude =
        exponent + (significant < point ? point - significant - 1 : point - significant);
    const double v = magnitude > 0 ? std::numeric_limits<double>::infinity() : 0.0;
    return negative ? -v : v;
  }

  std::string_view text_;
  const std::string& source_;
  size_t pos_ = 0;
};

/// Parses JSON as Python's json.loads does (bare NaN / Infinity / -Infinity accepted; ints stay ints).
/// Malformed input throws torchfit::FormatError naming `source_name`, the line and column, and the problem.
inline json python_json_parse(std::string_view text, const std::string& source_name) {
  return PythonJsonParser(text, source_name).parse_document();
}

/// Reads and parses a JSON file written by Python (or by torchfit); a missing, unreadable or malformed file
/// throws torchfit::FormatError naming the path.
inline json python_json_load(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw FormatError(fmt::format("cannot read {}: it is a directory, expected a JSON file", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return python_json_parse(bytes.str(), path.string());
}

}  // namespace torchfit::detail
