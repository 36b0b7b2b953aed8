// SPDX-License-Identifier: MIT
// Datasets without a length, read in order (HF's IterableDataset): training needs --max_steps, each data-parallel
// rank reads its own shard, and a resumed run skips exactly the samples it had consumed.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/error.hpp"

namespace torchfit {

/// A stream of examples with no length. `open(pass)` starts a pass over the whole stream (every rank's
/// samples, in a fixed order for a given pass number: a source may reshuffle per pass, as HF's set_epoch);
/// when a pass ends the next one is opened, so training reads an endless sequence and stops at --max_steps.
///
/// Sharding (HF's split_dataset_by_node): rank r of `world_size` keeps samples r, r + world_size, ... of each
/// pass. Resume skips the samples this rank had consumed: through the pass's `skip` when the source can pass
/// over samples without building them (a file reader counting lines), else by reading and dropping them.
template <typename Example = TensorDict>
class StreamingDataset {
 public:
  using ExampleType = Example;

  /// One pass: `next()` gives the following sample, or nullopt at the end of the pass; `skip(n)`, if set,
  /// passes over up to n samples and returns how many it passed (fewer only at the end of the pass).
  struct Pass {
    std::function<std::optional<Example>()> next;
    std::function<int64_t(int64_t)> skip = {};
  };
  using Open = std::function<Pass(int64_t pass)>;

  explicit StreamingDataset(Open open, int64_t rank = 0, int64_t world_size = 1)
      : open_(std::move(open)), rank_(rank), world_size_(world_size) {
    if (!open_) throw Error("StreamingDataset: no function to open a pass was given");
    if (world_size < 1 || rank < 0 || rank >= world_size)
      throw Error(
          fmt::format("StreamingDataset: rank {} is not one of world_size {} ranks (0 to world_size - 1)",
                      rank, world_size));
  }

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  /// Pass `pass` over the whole stream, unsharded.
  Pass open(int64_t pass) const { return open_(pass); }

 private:
  Open open_;
  int64_t rank_;
  int64_t world_size_;
};

namespace detail {

/// This rank's samples of one pass: raw samples rank, rank + world, ...
template <typename Example>
class ShardPass {
 public:
  using Pass = typename StreamingDataset<Example>::Pass;

  ShardPass(Pass raw, int64_t rank, int64_t world_size)
      : raw_(std::move(raw)), world_size_(world_size), gap_(rank) {}

  std::optional<Example> next() {
    if (ended_ || pass_raw(gap_) < gap_) return end();
    gap_ = world_size_ - 1;
    auto sample = raw_.next();
    return sample ? sample : end();
  }

  /// Passes over up to n >= 1 of this shard's samples; returns how many (fewer only when the pass ended).
  int64_t skip(int64_t n) {
    if (ended_) return 0;
    // The n-th shard sample is raw sample gap_ + (n - 1) * world_size from here.
    const int64_t wanted = gap_ + (n - 1) * world_size_ + 1;
    const int64_t passed = pass_raw(wanted);
    if (passed == wanted) {
      gap_ = world_size_ - 1;
      return n;
    }
    ended_ = true;
    return passed <= gap_ ? 0 : (passed - gap_ - 1) / world_size_ + 1;
  }

 private:
  std::optional<Example> end() {
    ended_ = true;
    return std::nullopt;
  }

  int64_t pass_raw(int64_t n) {
    if (n == 0) return 0;
    if (raw_.skip) return raw_.skip(n);
    int64_t passed = 0;
    while (passed < n && raw_.next()) ++passed;
    return passed;
  }

  Pass raw_;
  int64_t world_size_;
  int64_t gap_;  // raw samples before this shard's next one
  bool ended_ = false;
};

/// This rank's samples of pass 0, then pass 1, ...: an endless sequence with an exact position.
template <typename Example>
class StreamCursor {
 public:
  explicit StreamCursor(const StreamingDataset<Example>& data) : data_(data), shard_(open(0)) {}

  Example next() {
    while (true) {
      if (auto sample = shard_.next()) {
        ++read_in_pass_;
        return std::move(*sample);
      }
      next_pass();
    }
  }

  /// Passes over the next `n` samples (resuming at a data position).
  void skip(int64_t n) {
    while (n > 0) {
      const int64_t passed = shard_.skip(n);
      read_in_pass_ += passed;
      n -= passed;
      if (n > 0) next_pass();
    }
  }

 private:
  ShardPass<Example> open(int64_t pass) const {
    return ShardPass<Example>(data_.open(pass), data_.rank(), data_.world_size());
  }

  void next_pass() {
    if (read_in_pass_ == 0)
      throw Error(fmt::format("the streaming dataset has no sample for rank {} of {} in pass {}",
                              data_.rank(), data_.world_size(), pass_));
    shard_ = open(++pass_);
    read_in_pass_ = 0;
  }

  const StreamingDataset<Example>& data_;
  ShardPass<Example> shard_;
  int64_t pass_ = 0;
  int64_t read_in_pass_ = 0;
};

}  // namespace detail
}  // namespace torchfit
