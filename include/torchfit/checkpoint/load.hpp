// SPDX-License-Identifier: MIT
// Resuming from a checkpoint: read() reads and checks every file against what it will be loaded into, changing
// nothing; apply() then loads it all. A refused checkpoint leaves the model, optimizer, scheduler, loss scaler,
// callbacks and random generators exactly as they were.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/callback_handler.hpp"
#include "torchfit/checkpoint/archive.hpp"
#include "torchfit/checkpoint/json_file.hpp"
#include "torchfit/checkpoint/layout.hpp"
#include "torchfit/checkpoint/model_state.hpp"
#include "torchfit/checkpoint/optimizer_state.hpp"
#include "torchfit/checkpoint/progress.hpp"
#include "torchfit/checkpoint/rng_state.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_state.hpp"

namespace torchfit::checkpoint {

/// What a checkpoint is loaded into.
struct Targets {
  torch::nn::Module& model;
  torch::optim::Optimizer& optimizer;
  LRScheduler& scheduler;
  torchfit::detail::GradScaler* scaler = nullptr;  ///< set when training with fp16 loss scaling
  CallbackHandler* callbacks = nullptr;            ///< set to restore the callbacks' states and `control`
  TrainerControl* control = nullptr;
  int64_t rank = 0;  ///< this process in a job of world_size processes, whose generator states are loaded
  int64_t world_size = 1;
};

/// A checkpoint read whole and checked; apply() loads it.
struct Checkpoint {
  fs::path dir;
  TrainerState state;  ///< trainer_state.json, with the callbacks' states
  Progress progress;
  json scheduler_state;
  std::optional<json> scaler_state;
  torch::serialize::InputArchive optimizer;
  RngState rng;
  ModelStateCopies model;
};

/// Checks that `dir` is a checkpoint holding `files`, naming the first missing one.
inline void require_files(const fs::path& dir, const std::vector<const char*>& files) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw CheckpointError(fmt::format("checkpoint directory {} does not exist", dir.string()));
  for (const char* f : files)
    if (!fs::is_regular_file(dir / f, ec))
      throw CheckpointError(
          fmt::format("checkpoint {} is missing {}{}", dir.string(), f,
                      std::string(f) == optimizer_file ? " (was it saved with --save_only_model?)" : ""));
}

/// Reads every file of the checkpoint in `dir` and checks what can be checked without loading it: the weights
/// against the model, the generator states against the generators, the JSON files' contents. Throws
/// CheckpointError naming the first file that is missing, unreadable, corrupt or does not fit.
inline Checkpoint read(const fs::path& dir, const Targets& targets) {
  const std::string rank_rng_file = rng_file_of(targets.rank, targets.world_size);
  std::vector<const char*> files{
      model_file, state_file, optimizer_file, scheduler_file, rank_rng_file.c_str(), progress_file};
  if (targets.scaler) files.push_back(scaler_file);
  // The data position and the generator states belong to each process: another number of them cannot resume.
  if (const auto saved = saved_world_size(dir); saved && *saved != targets.world_size)
    throw CheckpointError(
        fmt::format("checkpoint {} was saved by {} process(es) and this run has {}: resume it with "
                    "{} (torchrun --nproc_per_node, --nnodes)",
                    dir.string(), *saved, targets.world_size, *saved));
  require_files(dir, files);
  Checkpoint c;
  c.dir = dir;
  try {
    c.state = TrainerState::from_json(read_json(dir / state_file), (dir / state_file).string());
  } catch (const FormatError& e) {
    throw CheckpointError(e.what());
  }
  c.scheduler_state = read_json(dir / scheduler_file);
  c.progress = Progress::from_json(read_json(dir / progress_file), dir / progress_file);
  if (targets.scaler) c.scaler_state = read_json(dir / scaler_file);
  c.optimizer = read_archive(dir / optimizer_file);
  c.rng = read_rng_state(dir / rank_rng_file);
  c.model = read_model_state(targets.model, dir / model_file);
  return c;
}

namespace detail {

// Runs `load`, naming `file` in the CheckpointError it may throw.
template <typename Load>
void loading(const fs::path& file, Load&& load) {
  try {
    load();
  } catch (const CheckpointError& e) {
    throw CheckpointError(fmt::format("{}: {}", file.string(), e.what()));
  }
}

}  // namespace detail

/// Loads what read() returned (its optimizer archive is consumed). The scheduler, the loss scaler, the optimizer
/// and the callbacks are loaded in turn, each all or nothing; if one refuses its state, those before it are put
/// back and the CheckpointError names the file. The weights and generator states, checked by read(), follow.
inline void apply(Checkpoint& c, const Targets& targets) {
  const json scheduler_before = targets.scheduler.state();
  const std::optional<json> scaler_before =
      targets.scaler ? std::optional<json>(targets.scaler->state()) : std::nullopt;
  const OptimizerSnapshot optimizer_before(targets.optimizer);
  try {
    detail::loading(c.dir / scheduler_file, [&] { targets.scheduler.load_state(c.scheduler_state); });
    if (targets.scaler)
      detail::loading(c.dir / scaler_file, [&] { targets.scaler->load_state(*c.scaler_state); });
    load_optimizer_state(targets.optimizer, c.optimizer, c.dir / optimizer_file);
    if (targets.callbacks)
      detail::loading(c.dir / state_file, [&] {
        targets.callbacks->restore_states(c.state.stateful_callbacks, *targets.control);
      });
  } catch (...) {
    // The scheduler writes its rates into the optimizer: put it back first, the optimizer's exact state last.
    targets.scheduler.load_state(scheduler_before);
    if (scaler_before) targets.scaler->load_state(*scaler_before);
    optimizer_before.restore(targets.optimizer);
    throw;
  }
  apply_model_state(c.model);
  apply_rng_state(c.rng);
}

}  // namespace torchfit::checkpoint
