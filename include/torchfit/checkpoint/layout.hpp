// SPDX-License-Identifier: MIT
// Where checkpoints live and which directories count as one.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"

namespace torchfit::checkpoint {

namespace fs = std::filesystem;

inline constexpr const char* model_file = "model.safetensors";
inline constexpr const char* optimizer_file = "optimizer.pt";
inline constexpr const char* scheduler_file = "scheduler.json";
inline constexpr const char* rng_file = "rng_state.pt";
inline constexpr const char* progress_file = "trainer_progress.json";
inline constexpr const char* scaler_file = "scaler.json";
inline constexpr const char* state_file = "trainer_state.json";
inline constexpr const char* args_file = "training_args.json";

/// The generator states of `rank` in a job of several processes: rng_state_<rank>.pt (HF's rng_state_<rank>.pth).
inline std::string rank_rng_file(int64_t rank) { return "rng_state_" + std::to_string(rank) + ".pt"; }

/// The generator states of `rank` in a job of `world_size` processes (rng_state.pt for a process alone).
inline std::string rng_file_of(int64_t rank, int64_t world_size) {
  return world_size == 1 ? rng_file : rank_rng_file(rank);
}

/// How many processes saved the checkpoint in `dir`, told by its generator files; nullopt without any (a
/// checkpoint saved with save_only_model).
inline std::optional<int64_t> saved_world_size(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / rng_file, ec)) return 1;
  int64_t ranks = 0;
  while (fs::is_regular_file(dir / rank_rng_file(ranks), ec)) ++ranks;
  return ranks > 0 ? std::optional<int64_t>(ranks) : std::nullopt;
}

/// `<output_dir>/checkpoint-<step>`.
inline fs::path dir_for(const fs::path& output_dir, int64_t step) {
  return output_dir / ("checkpoint-" + std::to_string(step));
}

/// The step of a `checkpoint-<digits>` directory name (HF's `^checkpoint-(\d+)$`), or nullopt.
inline std::optional<int64_t> step_of(const fs::path& dir) {
  static const std::regex pattern("^checkpoint-([0-9]{1,18})$");
  std::smatch m;
  const std::string name = dir.filename().string();
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  return std::stoll(m[1].str());
}

/// A checkpoint is complete once its trainer_state.json exists: saves write it last, inside a temporary
/// directory renamed into place only after everything is on disk, and deletions first rename the directory out of
/// sight, so a checkpoint-<step> directory is never half written nor half deleted.
inline bool is_complete(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / state_file, ec);
}

/// Complete checkpoints under output_dir, oldest (lowest step) first.
inline std::vector<fs::path> list(const fs::path& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output_dir, ec))
    if (auto step = step_of(entry.path()); step && entry.is_directory(ec) && is_complete(entry.path()))
      found.emplace_back(*step, entry.path());
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

/// The newest complete checkpoint in output_dir (HF's get_last_checkpoint); CheckpointError if there is none.
inline fs::path last(const fs::path& output_dir) {
  auto all = list(output_dir);
  if (all.empty())
    throw CheckpointError(fmt::format(
        "--resume_from_checkpoint last: no complete checkpoint-<step> directory in {}", output_dir.string()));
  return all.back();
}

}  // namespace torchfit::checkpoint
