// SPDX-License-Identifier: MIT
// Saving a checkpoint: every file written and flushed inside a temporary directory, published by a rename. A
// failure (a full disk, a file size limit) is a CheckpointError naming the checkpoint, the file and the cause;
// earlier checkpoints stay as they were and the temporary directory is removed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/checkpoint/directory.hpp"
#include "torchfit/checkpoint/json_file.hpp"
#include "torchfit/checkpoint/layout.hpp"
#include "torchfit/checkpoint/optimizer_state.hpp"
#include "torchfit/checkpoint/progress.hpp"
#include "torchfit/checkpoint/rng_state.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/detail/durable_file.hpp"
#include "torchfit/error.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit::checkpoint {

/// What a failed periodic save does (Trainer::set_save_error_policy).
enum class SaveErrorPolicy {
  raise,  ///< the CheckpointError stops training, as in HF
  warn,   ///< one warning naming the checkpoint and the cause; training goes on without that checkpoint
};

/// Saves checkpoint-<step> in output_dir: `write_files(dir)` writes the files into a temporary directory, which
/// is then published whole; leftovers of interrupted saves and deletions are cleared first. Returns the
/// checkpoint's directory. A CheckpointError from writing or publishing comes back as "cannot save checkpoint
/// <dir>: <cause>", with the temporary directory removed and every earlier checkpoint untouched.
template <typename WriteFiles>
fs::path save(const fs::path& output_dir, int64_t step, WriteFiles&& write_files) {
  const fs::path final_dir = dir_for(output_dir, step);
  try {
    remove_leftovers(output_dir);
    AtomicWriter writer(output_dir, step);
    write_files(writer.dir());
    writer.commit();
  } catch (const CheckpointError& e) {
    throw CheckpointError(fmt::format("cannot save checkpoint {}: {}", final_dir.string(), e.what()));
  }
  return final_dir;
}

/// Writes what resuming needs besides the weights: optimizer.pt, scheduler.json, the generator states
/// (`rng_states`: rng_state_bytes of each process, in rank order; rng_state.pt for a process alone,
/// rng_state_<rank>.pt for each rank of a job), trainer_progress.json and, with a loss scaler, scaler.json.
inline void save_training_state(const fs::path& dir, const torch::optim::Optimizer& optimizer,
                                const LRScheduler& scheduler, const torchfit::detail::GradScaler* scaler,
                                const Progress& progress, const std::vector<std::string>& rng_states) {
  save_optimizer_state(optimizer, dir / optimizer_file);
  save_json(scheduler.state(), dir / scheduler_file);
  const auto world_size = static_cast<int64_t>(rng_states.size());
  for (int64_t rank = 0; rank < world_size; ++rank)
    torchfit::detail::write_file_durably(dir / rng_file_of(rank, world_size),
                                         rng_states[static_cast<std::size_t>(rank)]);
  save_json(progress.to_json(), dir / progress_file);
  if (scaler) save_json(scaler->state(), dir / scaler_file);
}

/// Writes trainer_state.json (HF's bytes) and training_args.json.
inline void save_state_and_args(const fs::path& dir, const TrainerState& state,
                                const TrainingArguments& args) {
  torchfit::detail::write_file_durably(dir / state_file, state.to_json_string());
  torchfit::detail::write_file_durably(dir / args_file, args.to_json_string() + "\n");
}

}  // namespace torchfit::checkpoint
