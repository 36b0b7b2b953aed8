// SPDX-License-Identifier: MIT
// Numeric CSV and TSV files as a TensorDictDataset, parsed by libcsv (RFC 4180: quoted fields, embedded
// delimiters and newlines, CRLF). Opt-in, as it links a system library: link torchfit::csv (libcsv-dev).
#pragma once

#include <csv.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "torchfit/data/detail/mapped_file.hpp"
#include "torchfit/data/tensor_datasets.hpp"
#include "torchfit/detail/strings.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

/// How load_csv reads a file.
struct CsvOptions {
  CsvOptions(std::vector<std::string> labels = {})
      : label_columns(std::move(labels)) {}  // NOLINT: {{"label"}}

  /// Columns that become "labels" (none: the dataset has "inputs" only).
  std::vector<std::string> label_columns;
  /// Columns that become "inputs", in this order (empty: every column that is not a label, in file order).
  std::vector<std::string> feature_columns;
  /// Field separator; 0 picks a tab for .tsv and .tab files and a comma otherwise.
  char delimiter = 0;
  /// int64 (class indices; values must be whole numbers) or a floating type (regression targets).
  torch::Dtype label_dtype = torch::kLong;
};

namespace detail {

// Moves `values` into a tensor of `shape` without copying them.
template <typename T>
torch::Tensor tensor_owning(std::vector<T>&& values, std::vector<int64_t> shape, torch::Dtype dtype) {
  auto* owned = new std::vector<T>(std::move(values));
  return torch::from_blob(
      owned->data(), shape, [owned](void*) { delete owned; }, torch::TensorOptions().dtype(dtype));
}

// libcsv's callbacks fill this, one field and one row end at a time.
class CsvReader {
 public:
  CsvReader(std::filesystem::path path, const CsvOptions& options)
      : path_(std::move(path)), options_(options) {}

  TensorDictDataset read() {
    const MappedFile file(path_);
    const char delimiter =
        options_.delimiter != 0 ? options_.delimiter
        : ends_with(lower(path_.extension().string()), ".tsv") || lower(path_.extension().string()) == ".tab"
            ? '\t'
            : ',';
    csv_parser parser;
    if (csv_init(&parser, CSV_REPALL_NL | CSV_STRICT | CSV_STRICT_FINI) != 0)
      throw Error(fmt::format("cannot read {}: libcsv could not start", path_.string()));
    std::unique_ptr<csv_parser, void (*)(csv_parser*)> owner(&parser, csv_free);
    csv_set_delim(&parser, static_cast<unsigned char>(delimiter));
    const std::size_t parsed = csv_parse(&parser, file.data(), file.size(), on_field, on_row_end, this);
    if (parsed != file.size() || csv_fini(&parser, on_field, on_row_end, this) != 0) {
      const std::string_view before = file.bytes().substr(0, parsed);
      fail(1 + static_cast<int64_t>(std::count(before.begin(), before.end(), '\n')),
           fmt::format("malformed quoting ({})", csv_strerror(csv_error(&parser))));
    }
    if (names_.empty()) throw FormatError(fmt::format("{} has no header row", path_.string()));
    if (rows_ == 0) throw FormatError(fmt::format("{} has a header but no data rows", path_.string()));

    TensorDict columns;
    columns.insert("inputs",
                   tensor_owning(std::move(inputs_), {rows_, static_cast<int64_t>(feature_index_.size())},
                                 torch::kFloat));
    if (!label_index_.empty()) {
      std::vector<int64_t> shape = {rows_};
      if (label_index_.size() > 1) shape.push_back(static_cast<int64_t>(label_index_.size()));
      columns.insert("labels",
                     tensor_owning(std::move(labels_), shape, torch::kDouble).to(options_.label_dtype));
    }
    return TensorDictDataset(std::move(columns));
  }

 private:
  static void on_field(void* text, std::size_t length, void* self) {
    static_cast<CsvReader*>(self)->field(std::string_view(static_cast<const char*>(text), length));
  }
  static void on_row_end(int terminator, void* self) { static_cast<CsvReader*>(self)->row_end(terminator); }

  [[noreturn]] void fail(int64_t line, const std::string& problem) const {
    throw FormatError(fmt::format("{}:{}: {}", path_.string(), line, problem));
  }
  [[noreturn]] void fail_field(const std::string& problem) const {
    fail(field_line_, fmt::format("column {} (\"{}\"): {}", row_.size() + 1, names_[row_.size()], problem));
  }

  void field(std::string_view text) {
    field_line_ = line_;
    line_ += std::count(text.begin(), text.end(), '\n');
    if (!header_done_) {
      row_names_.emplace_back(text);
      return;
    }
    if (row_.size() >= names_.size())
      fail(field_line_, fmt::format("the row has more than the header's {} columns", names_.size()));
    row_.push_back(number(text));
  }

  double number(std::string_view text) const {
    if (text.empty()) fail_field("the value is empty");
    std::string_view digits = text.front() == '+' ? text.substr(1) : text;
    double value = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (error != std::errc() || end != digits.data() + digits.size())
      fail_field(fmt::format("\"{}\" is not a number", text));
    return value;
  }

  void row_end(int terminator) {
    const int64_t row_line = field_line_;
    if (terminator == '\n') ++line_;
    if (!header_done_) {
      if (row_names_.empty()) return;  // a blank line before the header
      header(row_line);
      return;
    }
    if (row_.empty()) return;  // a blank line
    if (row_.size() != names_.size())
      fail(row_line, fmt::format("the row has {} columns but the header has {}", row_.size(), names_.size()));
    for (const std::size_t i : feature_index_) inputs_.push_back(static_cast<float>(row_[i]));
    for (const std::size_t i : label_index_) {
      const double value = row_[i];
      if (!torch::isFloatingType(options_.label_dtype) &&
          (!std::isfinite(value) || std::trunc(value) != value))
        fail(row_line, fmt::format("column {} (\"{}\"): label {} is not a whole number (labels are {}; use "
                                   "label_dtype torch::kFloat for regression targets)",
                                   i + 1, names_[i], value, c10::toString(options_.label_dtype)));
      labels_.push_back(value);
    }
    ++rows_;
    row_.clear();
  }

  void header(int64_t line) {
    names_ = std::move(row_names_);
    header_done_ = true;
    const auto index_of = [&](const std::string& name, const char* role) {
      const auto it = std::find(names_.begin(), names_.end(), name);
      if (it == names_.end())
        fail(line, fmt::format("the header has no {} column \"{}\" (columns: {})", role, name,
                               fmt::join(names_, ", ")));
      return static_cast<std::size_t>(it - names_.begin());
    };
    for (std::size_t i = 0; i < names_.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (names_[i] == names_[j])
          fail(line, fmt::format("the header names column \"{}\" twice", names_[i]));
    for (const auto& name : options_.label_columns) label_index_.push_back(index_of(name, "label"));
    for (const auto& name : options_.feature_columns) feature_index_.push_back(index_of(name, "feature"));
    if (options_.feature_columns.empty())
      for (std::size_t i = 0; i < names_.size(); ++i)
        if (std::find(label_index_.begin(), label_index_.end(), i) == label_index_.end())
          feature_index_.push_back(i);
    if (feature_index_.empty()) fail(line, "no column is left for the inputs");
  }

  std::filesystem::path path_;
  const CsvOptions& options_;
  std::vector<std::string> names_, row_names_;
  bool header_done_ = false;
  std::vector<std::size_t> feature_index_, label_index_;
  std::vector<double> row_;
  std::vector<float> inputs_;
  std::vector<double> labels_;
  int64_t rows_ = 0;
  int64_t line_ = 1;        // line of the next field
  int64_t field_line_ = 1;  // line where the last field started
};

}  // namespace detail

/// A numeric CSV or TSV file with a header row as a TensorDictDataset: "inputs" (float32, [rows, features])
/// and, when label columns are named, "labels" ([rows], or [rows, labels] for several). Blank lines are
/// skipped; fields may be quoted. A file that does not fit (a missing column, a row with too few or too many
/// fields, a value that is not a number, a label that is not a whole number) is a FormatError naming the file,
/// the line and the column. The values are parsed once into memory (4 bytes per feature value).
inline TensorDictDataset load_csv(const std::filesystem::path& path, const CsvOptions& options = {}) {
  return detail::CsvReader(path, options).read();
}

}  // namespace torchfit
