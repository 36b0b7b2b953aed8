// SPDX-License-Identifier: MIT
// The Trainer's loss bookkeeping in a checkpoint (trainer_progress.json), so that losses logged after a resume
// equal an uninterrupted run's.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "torchfit/detail/state_fields.hpp"
#include "torchfit/json.hpp"

namespace torchfit::checkpoint {

/// Sums of per-step losses: since the last training log, and of everything logged so far.
struct Progress {
  double loss_since_last_log = 0;
  double loss_total = 0;
  int64_t last_logged_step = 0;  ///< global_step of the last training log

  json to_json() const {
    return {{"loss_since_last_log", loss_since_last_log},
            {"loss_total", loss_total},
            {"last_logged_step", last_logged_step}};
  }

  /// Reads to_json()'s form; a missing or mistyped member throws CheckpointError naming `file` and the member.
  static Progress from_json(const json& object, const std::filesystem::path& file) {
    const std::string what = file.string();
    return {torchfit::detail::number_member(object, what, "loss_since_last_log"),
            torchfit::detail::number_member(object, what, "loss_total"),
            torchfit::detail::integer_member(object, what, "last_logged_step")};
  }
};

}  // namespace torchfit::checkpoint
