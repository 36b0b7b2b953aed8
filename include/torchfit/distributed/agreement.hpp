// SPDX-License-Identifier: MIT
// One decision for all ranks: the loop acts on TrainerControl flags that every rank holds alike.
#pragma once

#include <torch/torch.h>

#include "torchfit/distributed/world.hpp"
#include "torchfit/trainer_control.hpp"

namespace torchfit::distributed {

/// Raises on every rank each TrainerControl flag raised on any rank (one all-reduce of five flags): a callback
/// acting on one rank only (a tracker on rank 0, a NaN seen by one rank), a stop signal one rank received. The
/// loop calls it before acting on the flags, after each micro-step's events and after those of a log, evaluation
/// or save, so that ranks never part ways and wait for each other forever.
inline void agree(TrainerControl& control) {
  Backend* b = backend();
  if (b == nullptr) return;
  bool* flags[] = {&control.should_training_stop, &control.should_epoch_stop, &control.should_save,
                   &control.should_evaluate, &control.should_log};
  int raised[5];
  for (int i = 0; i < 5; ++i) raised[i] = *flags[i] ? 1 : 0;
  torch::Tensor t =
      torch::from_blob(raised, {5}, torch::kInt).to(b->device(), /*non_blocking=*/false, /*copy=*/true);
  b->all_reduce(t, ReduceOp::max, "agreeing on the TrainerControl flags");
  t = t.cpu();
  for (int i = 0; i < 5; ++i) *flags[i] = t.data_ptr<int>()[i] != 0;
}

}  // namespace torchfit::distributed
