// SPDX-License-Identifier: MIT
// Language-model training data as nanoGPT keeps it: one flat file of token ids (train.bin), memory-mapped and cut
// into fixed-length windows.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/data/detail/mapped_file.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "token files are little-endian, as numpy writes them");

/// The width of the ids in a token file: uint16 (nanoGPT's choice for GPT-2's 50257 tokens) or uint32.
enum class TokenWidth { uint16 = 2, uint32 = 4 };

/// A flat little-endian array of token ids (nanoGPT's `np.array(ids, dtype=np.uint16).tofile("train.bin")`),
/// memory-mapped, as windows of `context_length` tokens starting every `stride` tokens (default: the context
/// length, so windows do not overlap; nanoGPT samples any offset, which stride 1 gives). Example i is
/// {"input_ids": tokens[s, s + T), "labels": tokens[s + 1, s + T + 1)} with s = i * stride, both int64: the
/// labels are already shifted, so the model's output at position t is scored against labels[t].
class TokenFileDataset : public torch::data::datasets::Dataset<TokenFileDataset, TensorDict> {
 public:
  TokenFileDataset(const std::filesystem::path& path, int64_t context_length,
                   TokenWidth width = TokenWidth::uint16, std::optional<int64_t> stride = std::nullopt)
      : file_(std::make_shared<detail::MappedFile>(path)),
        width_(static_cast<std::size_t>(width)),
        context_length_(context_length),
        stride_(stride.value_or(context_length)) {
    if (context_length_ < 1 || stride_ < 1)
      throw Error(fmt::format("TokenFileDataset {}: context_length and stride must be >= 1 (got {} and {})",
                              path.string(), context_length_, stride_));
    if (file_->size() % width_ != 0)
      throw FormatError(
          fmt::format("{} has {} bytes, not a whole number of {}-byte token ids (truncated, or not "
                      "a uint{} token file?)",
                      path.string(), file_->size(), width_, 8 * width_));
    num_tokens_ = static_cast<int64_t>(file_->size() / width_);
    if (num_tokens_ < context_length_ + 1)
      throw FormatError(fmt::format("{} has {} tokens, fewer than one window needs (context_length {} + 1)",
                                    path.string(), num_tokens_, context_length_));
    num_windows_ = (num_tokens_ - 1 - context_length_) / stride_ + 1;
  }

  TensorDict get(std::size_t index) override {
    const int64_t start = static_cast<int64_t>(index) * stride_;
    torch::Tensor tokens = torch::empty({context_length_ + 1}, torch::kLong);
    auto* out = tokens.data_ptr<int64_t>();
    const char* in = file_->data() + static_cast<std::size_t>(start) * width_;
    for (int64_t i = 0; i <= context_length_; ++i, in += width_) {
      if (width_ == 2) {
        uint16_t id;
        std::memcpy(&id, in, 2);
        out[i] = id;
      } else {
        uint32_t id;
        std::memcpy(&id, in, 4);
        out[i] = id;
      }
    }
    return {{"input_ids", tokens.narrow(0, 0, context_length_)},
            {"labels", tokens.narrow(0, 1, context_length_)}};
  }

  c10::optional<std::size_t> size() const override { return static_cast<std::size_t>(num_windows_); }
  int64_t num_tokens() const { return num_tokens_; }

 private:
  std::shared_ptr<detail::MappedFile> file_;
  std::size_t width_;
  int64_t context_length_;
  int64_t stride_;
  int64_t num_tokens_ = 0;
  int64_t num_windows_ = 0;
};

/// Writes `tokens` (integers, any shape, read flat) as a token file TokenFileDataset reads; Error naming the
/// position of an id that does not fit `width`.
inline void write_token_file(const std::filesystem::path& path, const torch::Tensor& tokens,
                             TokenWidth width = TokenWidth::uint16) {
  const torch::Tensor ids = tokens.to(torch::kCPU, torch::kLong).contiguous().view({-1});
  const int64_t limit = width == TokenWidth::uint16 ? 0xFFFF : 0xFFFFFFFFLL;
  const auto* p = ids.data_ptr<int64_t>();
  std::vector<char> bytes(static_cast<std::size_t>(ids.numel()) * static_cast<std::size_t>(width));
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (p[i] < 0 || p[i] > limit)
      throw Error(fmt::format("write_token_file {}: token {} at position {} does not fit a uint{}",
                              path.string(), p[i], i, 8 * static_cast<int>(width)));
    const auto id32 = static_cast<uint32_t>(p[i]);
    const auto id16 = static_cast<uint16_t>(p[i]);
    std::memcpy(bytes.data() + i * static_cast<int64_t>(width),
                width == TokenWidth::uint16 ? static_cast<const void*>(&id16) : &id32,
                static_cast<std::size_t>(width));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error(fmt::format("cannot write {}", path.string()));
}

}  // namespace torchfit
