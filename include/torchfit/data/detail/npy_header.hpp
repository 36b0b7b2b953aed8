// SPDX-License-Identifier: MIT
// NumPy's .npy format (numpy.lib.format): the magic "\x93NUMPY", a version, the header's length, then the header:
// a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces to an
// aligned data offset and ended by a newline; then the array's bytes.
#pragma once

#include <cctype>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/error.hpp"

namespace torchfit::detail {

/// What the header of a .npy file says.
struct NpyHeader {
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  std::size_t data_offset = 0;  ///< where the array's bytes start
  std::size_t data_bytes = 0;
};

namespace npy_impl {

// A value of the header's Python literal: a string, a bool, an int, or a tuple of ints.
struct Value {
  enum class Kind { string, boolean, integer, tuple, other } kind = Kind::other;
  std::string text;  // string contents, or the literal for Kind::other
  bool flag = false;
  int64_t integer = 0;
  std::vector<int64_t> items;
};

// A recursive-descent reader of the literal subset numpy writes (numpy parses it with ast.literal_eval).
class Parser {
 public:
  Parser(std::string_view text, std::string file) : text_(text), file_(std::move(file)) {}

  std::map<std::string, Value> dict() {
    std::map<std::string, Value> out;
    expect('{');
    while (!accept('}')) {
      Value key = value();
      if (key.kind != Value::Kind::string) fail("a dict key must be a string");
      expect(':');
      if (!out.emplace(key.text, value()).second) fail(fmt::format("the key '{}' is given twice", key.text));
      if (!accept(',')) {
        expect('}');
        break;
      }
    }
    skip_blanks();
    if (pos_ != text_.size()) fail("text follows the dict");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw FormatError(fmt::format("{} is not a valid .npy file: header character {}: {} (header: {})", file_,
                                  pos_ + 1, problem, text_));
  }
  void skip_blanks() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool accept(char c) {
    skip_blanks();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(fmt::format("expected '{}'", c));
  }

  Value value() {
    skip_blanks();
    if (pos_ >= text_.size()) fail("the header ends where a value belongs");
    const char c = text_[pos_];
    Value v;
    if (c == '[') fail("a list is not a plain dtype (structured arrays are not supported)");
    if (c == '\'' || c == '"') {
      v.kind = Value::Kind::string;
      const std::size_t end = text_.find(c, pos_ + 1);
      if (end == std::string_view::npos) fail("a string is not closed");
      v.text = std::string(text_.substr(pos_ + 1, end - pos_ - 1));
      pos_ = end + 1;
    } else if (c == '(') {
      ++pos_;
      v.kind = Value::Kind::tuple;
      while (!accept(')')) {
        const Value item = value();
        if (item.kind != Value::Kind::integer) fail("a shape holds integers only");
        v.items.push_back(item.integer);
        if (!accept(',')) {
          expect(')');
          break;
        }
      }
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-') {
      const std::size_t start = pos_;
      pos_ += c == '-' ? 1 : 0;
      int64_t n = 0;
      if (pos_ >= text_.size() || !std::isdigit(static_cast<unsigned char>(text_[pos_])))
        fail("a number has no digits");
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        const int digit = text_[pos_++] - '0';
        if (n > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("a number is too large");
        n = n * 10 + digit;
      }
      v.kind = Value::Kind::integer;
      v.integer = text_[start] == '-' ? -n : n;
    } else {
      const std::size_t start = pos_;
      while (pos_ < text_.size() &&
             (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_'))
        ++pos_;
      if (pos_ == start) fail(fmt::format("unexpected '{}'", c));
      v.text = std::string(text_.substr(start, pos_ - start));
      v.kind = v.text == "True" || v.text == "False" ? Value::Kind::boolean : Value::Kind::other;
      v.flag = v.text == "True";
    }
    return v;
  }

  std::string_view text_;
  std::string file_;
  std::size_t pos_ = 0;
};

// numpy's dtype string ('<f4') as a libtorch type; Error naming what cannot be read and why.
inline torch::ScalarType dtype_of(const std::string& descr, const std::string& file) {
  static const std::map<std::string, torch::ScalarType> types = {
      {"b1", torch::kBool},  {"u1", torch::kByte},  {"i1", torch::kChar},
      {"i2", torch::kShort}, {"i4", torch::kInt},   {"i8", torch::kLong},
      {"f2", torch::kHalf},  {"f4", torch::kFloat}, {"f8", torch::kDouble}};
  const auto refuse = [&](const std::string& why) {
    throw FormatError(fmt::format("{}: cannot read dtype '{}': {}", file, descr, why));
  };
  if (descr.size() < 3) refuse("not a plain numpy dtype");
  const char order = descr[0];
  const auto type = types.find(descr.substr(1));
  if (type == types.end())
    refuse(
        "libtorch has no such type here (supported: bool, uint8, int8/16/32/64, float16/32/64; convert the "
        "array with astype first)");
  const bool one_byte = descr[2] == '1';
  if (order == '>' && !one_byte)
    refuse("big-endian data (save it little-endian: arr.astype(arr.dtype.newbyteorder('<')))");
  if (order != '<' && order != '|' && order != '=' && order != '>') refuse("unknown byte order");
  return type->second;
}

}  // namespace npy_impl

/// Reads and checks the header of a .npy file whose bytes are `bytes`; FormatError naming `file` and the
/// problem for anything numpy would not write for a plain C-ordered array of a libtorch type.
inline NpyHeader parse_npy_header(std::string_view bytes, const std::string& file) {
  const auto fail = [&](const std::string& problem) {
    throw FormatError(fmt::format("{} is not a valid .npy file: {}", file, problem));
  };
  static constexpr std::string_view magic("\x93NUMPY", 6);
  if (bytes.size() < 10 || bytes.substr(0, 6) != magic) fail("it does not start with \\x93NUMPY");
  const auto byte = [&](std::size_t i) {
    return static_cast<std::size_t>(static_cast<unsigned char>(bytes[i]));
  };
  const std::size_t major = byte(6);
  std::size_t length = 0, start = 0;
  if (major == 1) {
    length = byte(8) | byte(9) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail("it ends inside its header length");
    length = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
    start = 12;
  } else {
    fail(fmt::format("format version {}.{} is unknown (1.0, 2.0 and 3.0 are)", major, byte(7)));
  }
  if (length > bytes.size() - start)
    fail(fmt::format("its {}-byte header runs past the end of the {}-byte file", length, bytes.size()));

  const auto dict = npy_impl::Parser(bytes.substr(start, length), file).dict();
  for (const char* key : {"descr", "fortran_order", "shape"})
    if (dict.count(key) == 0) fail(fmt::format("the header has no '{}'", key));
  if (dict.size() != 3) fail("the header has keys other than 'descr', 'fortran_order' and 'shape'");
  const auto& descr = dict.at("descr");
  const auto& fortran = dict.at("fortran_order");
  const auto& shape = dict.at("shape");
  if (descr.kind != npy_impl::Value::Kind::string) fail("'descr' is not a dtype string");
  if (fortran.kind != npy_impl::Value::Kind::boolean) fail("'fortran_order' is not True or False");
  if (shape.kind != npy_impl::Value::Kind::tuple) fail("'shape' is not a tuple");
  if (fortran.flag)
    throw FormatError(
        fmt::format("{}: the array is stored in Fortran (column-major) order, which cannot be read "
                    "in place; save it with np.save(path, np.ascontiguousarray(arr))",
                    file));

  NpyHeader h;
  h.dtype = npy_impl::dtype_of(descr.text, file);
  h.shape = shape.items;
  h.data_offset = start + length;
  std::size_t bytes_needed = c10::elementSize(h.dtype);
  for (const int64_t n : h.shape) {
    if (n < 0) fail(fmt::format("the shape has a negative dimension {}", n));
    const auto size = static_cast<std::size_t>(n);
    if (size != 0 && bytes_needed > std::numeric_limits<std::size_t>::max() / size)
      fail("the shape is too large");
    bytes_needed *= size;
  }
  h.data_bytes = bytes_needed;
  const std::size_t available = bytes.size() - h.data_offset;
  if (available != h.data_bytes)
    fail(fmt::format("shape ({}) of {} needs {} data bytes but the file has {}{}", fmt::join(h.shape, ", "),
                     c10::toString(h.dtype), h.data_bytes, available,
                     available < h.data_bytes ? " (truncated?)" : ""));
  return h;
}

}  // namespace torchfit::detail
