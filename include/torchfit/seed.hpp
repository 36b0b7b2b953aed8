// SPDX-License-Identifier: MIT
// Seeding every generator a training program draws from (HF's set_seed and enable_full_determinism).
#pragma once

#include <cstdint>
#include <cstdlib>

#include <torch/torch.h>

#include "torchfit/log.hpp"

namespace torchfit {

/// Seeds what a training program draws from (HF's `set_seed`): libtorch's CPU generator and the default
/// generator of every CUDA device (initial weights, dropout, torch::randn, torch::randperm) and C's `rand()`.
/// Call it before building the model, so that two runs start from the same weights. torchfit's own shuffling
/// is seeded per epoch from `seed` / `data_seed`; trackers' run ids stay random. With `deterministic`, also
/// switches to deterministic algorithms (HF's `enable_full_determinism`): cuDNN deterministic without
/// benchmark mode, and `CUBLAS_WORKSPACE_CONFIG=:16:8` unless set (read when CUDA starts, so call this
/// first).
inline void set_seed(int64_t seed, bool deterministic = false) {
  torch::manual_seed(static_cast<uint64_t>(seed));  // every CUDA device's generator too
  std::srand(static_cast<unsigned>(seed));
  if (!deterministic) return;
  ::setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8", /*overwrite=*/0);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
}

namespace detail {

/// What the Trainer's constructor does with `seed` and `full_determinism` (HF's Trainer.__init__), warning
/// when determinism is switched on only now, after the model's weights were drawn.
inline void seed_trainer(int64_t seed, bool full_determinism) {
  if (full_determinism && !at::globalContext().deterministicAlgorithms())
    log::warning(
        "--full_determinism: deterministic algorithms are switched on by the Trainer, after the model's "
        "weights were drawn; call torchfit::set_seed(args.seed, /*deterministic=*/true) before building "
        "the model so that the whole run is deterministic");
  set_seed(seed, full_determinism);
}

}  // namespace detail

}  // namespace torchfit
