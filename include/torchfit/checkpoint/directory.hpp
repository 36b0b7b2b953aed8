// SPDX-License-Identifier: MIT
// Checkpoint directories appear and disappear whole: saves write into a hidden temporary directory renamed into
// place at the end, deletions rename the directory out of sight before removing it. Hidden names start with a
// dot, so list() and `--resume_from_checkpoint last` never see them, and remove_leftovers() clears what a crash
// left behind.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "torchfit/checkpoint/layout.hpp"
#include "torchfit/detail/durable_file.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"

namespace torchfit::checkpoint {

namespace detail {

inline constexpr const char* temporary_tag = ".tmp-";
inline constexpr const char* deleting_tag = ".deleting-";

/// `<parent>/.<name><tag><random>`, e.g. `.checkpoint-6.tmp-12345`.
inline fs::path hidden_sibling(const fs::path& dir, const char* tag) {
  std::random_device random;
  return dir.parent_path() / ("." + dir.filename().string() + tag + std::to_string(random()));
}

/// A directory a save or a deletion left when the process died in the middle.
inline bool is_leftover(const fs::path& path) {
  const std::string name = path.filename().string();
  return name.rfind(".checkpoint-", 0) == 0 &&
         (name.find(temporary_tag) != std::string::npos || name.find(deleting_tag) != std::string::npos);
}

[[noreturn]] inline void throw_fs_error(const std::string& what, const std::error_code& ec) {
  throw CheckpointError(fmt::format("{}: {}", what, ec.message()));
}

/// Renames `dir` to a hidden `.deleting-` name and flushes the rename, so that whatever happens to the deletion
/// afterwards, `dir` is gone as a whole; returns the new name.
inline fs::path move_aside(const fs::path& dir) {
  const fs::path aside = hidden_sibling(dir, deleting_tag);
  std::error_code ec;
  fs::rename(dir, aside, ec);
  if (ec) throw_fs_error(fmt::format("cannot move {} aside to delete it", dir.string()), ec);
  torchfit::detail::sync_directory(dir.parent_path());
  return aside;
}

/// Removes a directory already out of sight; what cannot be removed now goes with remove_leftovers().
inline void remove_hidden(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace detail

/// Deletes a checkpoint directory so that an interruption never leaves it half deleted under its own name.
inline void remove_checkpoint(const fs::path& dir) { detail::remove_hidden(detail::move_aside(dir)); }

/// Removes what interrupted saves and deletions left in output_dir (they never count as checkpoints).
inline void remove_leftovers(const fs::path& output_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output_dir, ec))
    if (detail::is_leftover(entry.path())) detail::remove_hidden(entry.path());
}

/// Writes a checkpoint into `.checkpoint-<step>.tmp-<random>` and renames it to `checkpoint-<step>` on commit();
/// destroying an uncommitted writer removes the temporary directory. A crash at any point leaves earlier
/// checkpoints intact and nothing that list() or resume would take for a checkpoint.
class AtomicWriter {
 public:
  AtomicWriter(const fs::path& output_dir, int64_t step) : final_(dir_for(output_dir, step)) {
    std::error_code ec;
    fs::create_directories(output_dir, ec);
    if (ec)
      detail::throw_fs_error(fmt::format("cannot create the output directory {}", output_dir.string()), ec);
    tmp_ = detail::hidden_sibling(final_, detail::temporary_tag);
    if (!fs::create_directory(tmp_, ec))
      detail::throw_fs_error(fmt::format("cannot create {}", tmp_.string()),
                             ec ? ec : std::make_error_code(std::errc::file_exists));
  }
  ~AtomicWriter() {
    if (!committed_) detail::remove_hidden(tmp_);
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  /// Where files are written until commit(); each must be flushed to disk when written (DurableFile).
  const fs::path& dir() const { return tmp_; }
  /// Where the checkpoint lives after commit().
  const fs::path& final_dir() const { return final_; }

  /// Publishes the directory under its final name, replacing an older checkpoint of the same step.
  void commit() {
    torchfit::detail::sync_directory(tmp_);
    const fs::path parent = final_.parent_path();
    std::error_code ec;
    std::optional<fs::path> replaced;
    if (fs::exists(final_, ec)) replaced = detail::move_aside(final_);
    fs::rename(tmp_, final_, ec);
    if (ec) {
      std::error_code ignored;
      if (replaced) fs::rename(*replaced, final_, ignored);  // put the older one back
      detail::throw_fs_error(fmt::format("cannot rename {} to {}", tmp_.string(), final_.string()), ec);
    }
    committed_ = true;
    torchfit::detail::sync_directory(parent);
    if (replaced) detail::remove_hidden(*replaced);
  }

 private:
  fs::path final_;
  fs::path tmp_;
  bool committed_ = false;
};

/// Deletes the oldest checkpoints beyond `limit`, never the newest one (needed to resume) nor `best` (HF
/// deletes the newest at the end of training when the limit is 1, #35070; torchfit keeps both, so the effective
/// limit is 2 when they differ). A checkpoint that cannot be deleted is kept, with a warning.
inline void rotate(const fs::path& output_dir, std::optional<int64_t> limit,
                   const std::optional<std::string>& best) {
  if (!limit || *limit <= 0) return;
  auto all = list(output_dir);
  if (static_cast<int64_t>(all.size()) <= *limit) return;
  const auto same = [](const fs::path& a, const fs::path& b) {
    std::error_code ec;
    return fs::equivalent(a, b, ec);
  };
  std::vector<fs::path> keep{all.back()};
  for (const auto& p : all)
    if (best && same(p, *best) && !same(p, all.back())) keep.push_back(p);
  int64_t budget =
      std::max<int64_t>(*limit, static_cast<int64_t>(keep.size())) - static_cast<int64_t>(keep.size());
  for (auto it = all.rbegin() + 1; it != all.rend(); ++it) {
    if (std::any_of(keep.begin(), keep.end(), [&](const fs::path& k) { return same(k, *it); })) continue;
    if (budget > 0) {
      --budget;
      continue;
    }
    log::info("Deleting older checkpoint [{}] due to args.save_total_limit", it->string());
    try {
      remove_checkpoint(*it);
    } catch (const CheckpointError& e) {
      log::warning("keeping {}: {}", it->string(), e.what());
    }
  }
}

}  // namespace torchfit::checkpoint
