// SPDX-License-Identifier: MIT
// Text files read line by line and tokenized by a user function (HF's load_dataset("text") followed by map()):
// a map-style dataset of the lines, and a streaming one.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/data/detail/mapped_file.hpp"
#include "torchfit/data/streaming.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

/// Turns a text into token ids. It may be called from several data-loading threads at once.
using Tokenizer = std::function<std::vector<int64_t>(std::string_view text)>;

namespace detail {

/// The lines of a mapped text, without their line ending ("\n" or "\r\n"), skipping blank ones.
class LineScanner {
 public:
  explicit LineScanner(std::string_view text) : text_(text) {}

  /// The next non-blank line and its 1-based line number, or nullopt at the end.
  std::optional<std::pair<std::string_view, int64_t>> next() {
    while (pos_ < text_.size()) {
      const std::size_t end = std::min(text_.find('\n', pos_), text_.size());
      std::string_view line = text_.substr(pos_, end - pos_);
      pos_ = end + 1;
      ++line_number_;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.find_first_not_of(" \t") != std::string_view::npos) return std::make_pair(line, line_number_);
    }
    return std::nullopt;
  }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;
  int64_t line_number_ = 0;
};

inline TensorDict tokenized(const Tokenizer& tokenizer, std::string_view line,
                            const std::filesystem::path& path, int64_t line_number) {
  const std::vector<int64_t> ids = tokenizer(line);
  if (ids.empty())
    throw Error(
        fmt::format("{}:{}: the tokenizer made no token of this non-blank line", path.string(), line_number));
  return {{"input_ids", torch::tensor(ids, torch::kLong)}};
}

}  // namespace detail

/// One example per non-blank line of a text file (without its line ending): {"input_ids": tokenizer(line)},
/// int64, of the line's own length: batch it with a PaddingCollator or LanguageModelingCollator. The file is
/// memory-mapped and indexed once (8 bytes per line); lines are tokenized when read.
class TextLineDataset : public torch::data::datasets::Dataset<TextLineDataset, TensorDict> {
 public:
  TextLineDataset(const std::filesystem::path& path, Tokenizer tokenizer)
      : file_(std::make_shared<detail::MappedFile>(path)), tokenizer_(std::move(tokenizer)) {
    if (!tokenizer_) throw Error(fmt::format("TextLineDataset {}: no tokenizer was given", path.string()));
    detail::LineScanner lines(file_->bytes());
    while (const auto line = lines.next()) {
      starts_.push_back(static_cast<std::size_t>(line->first.data() - file_->data()));
      numbers_.push_back(line->second);
    }
  }

  TensorDict get(std::size_t index) override {
    const std::string_view rest = file_->bytes().substr(starts_.at(index));
    const auto line = detail::LineScanner(rest).next();
    return detail::tokenized(tokenizer_, line->first, file_->path(), numbers_[index]);
  }

  c10::optional<std::size_t> size() const override { return starts_.size(); }

 private:
  std::shared_ptr<detail::MappedFile> file_;
  Tokenizer tokenizer_;
  std::vector<std::size_t> starts_;  // offset of each non-blank line
  std::vector<int64_t> numbers_;     // its line number, for messages
};

/// The non-blank lines of a text file as a stream of {"input_ids": tokenizer(line)} (see TextLineDataset), for
/// files too large to index, each pass reading the file from its start; shard `rank` of `world_size` (see
/// StreamingDataset). Skipping on resume scans lines without tokenizing them.
inline StreamingDataset<TensorDict> text_line_stream(const std::filesystem::path& path, Tokenizer tokenizer,
                                                     int64_t rank = 0, int64_t world_size = 1) {
  if (!tokenizer) throw Error(fmt::format("text_line_stream {}: no tokenizer was given", path.string()));
  auto file = std::make_shared<detail::MappedFile>(path, /*sequential=*/true);
  return StreamingDataset<TensorDict>(
      [file, tokenizer = std::move(tokenizer)](int64_t) {
        auto lines = std::make_shared<detail::LineScanner>(file->bytes());
        StreamingDataset<TensorDict>::Pass pass;
        pass.next = [file, tokenizer, lines]() -> std::optional<TensorDict> {
          const auto line = lines->next();
          if (!line) return std::nullopt;
          return detail::tokenized(tokenizer, line->first, file->path(), line->second);
        };
        pass.skip = [lines](int64_t n) {
          int64_t passed = 0;
          while (passed < n && lines->next()) ++passed;
          return passed;
        };
        return pass;
      },
      rank, world_size);
}

}  // namespace torchfit
