// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include <fmt/format.h>

#include "torchfit/distributed/shard.hpp"
#include "torchfit/error.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// The sizes of a training run, derived from the arguments and the train dataset's length as HF's
/// set_initial_training_values derives them (in binary doubles, as Python computes them).
struct TrainingPlan {
  int64_t num_samples = 0;        ///< samples in the train dataset (a stream: those --max_steps reads)
  int64_t batch_size = 0;         ///< samples per micro-batch of each process
  int64_t batches_per_epoch = 0;  ///< micro-batches per epoch of each process (HF's len(train_dataloader))
  int64_t total_batch_size = 0;   ///< samples per update over all processes (HF's total_train_batch_size)
  int64_t updates_per_epoch = 0;  ///< optimizer steps per epoch: ceil(batches / GA), at least 1
  int64_t max_steps = 0;          ///< optimizer steps of the whole run
  int64_t num_train_epochs = 0;   ///< epochs the loop iterates (the last one may stop early)

  /// The plan for a train dataset of `length` samples (nullopt: a stream) shared by `world_size` processes;
  /// ArgumentError naming the flag when there is nothing to train, the step count does not fit in 64 bits, or a
  /// stream comes without --max_steps.
  static TrainingPlan make(const TrainingArguments& args, std::optional<int64_t> length,
                           int64_t world_size = 1) {
    if (!length) return unsized(args, world_size);
    const int64_t num_samples = *length;
    if (num_samples == 0) throw Error("train dataset is empty: there is nothing to train on");
    TrainingPlan plan;
    plan.num_samples = num_samples;
    plan.batch_size = args.per_device_train_batch_size;
    plan.batches_per_epoch = distributed::Shard{0, world_size}.num_batches(num_samples, plan.batch_size,
                                                                           args.dataloader_drop_last);
    if (plan.batches_per_epoch == 0)
      throw ArgumentError(fmt::format(
          "--dataloader_drop_last drops every batch: the train dataset has {} samples, "
          "fewer than --per_device_train_batch_size {}{}",
          num_samples, plan.batch_size, world_size > 1 ? fmt::format(" × {} processes", world_size) : ""));
    const int64_t ga = args.gradient_accumulation_steps;
    plan.total_batch_size = plan.batch_size * ga * world_size;
    plan.updates_per_epoch = std::max<int64_t>((plan.batches_per_epoch + ga - 1) / ga, 1);
    if (args.max_steps > 0) {
      plan.max_steps = args.max_steps;
      plan.num_train_epochs = (plan.max_steps + plan.updates_per_epoch - 1) / plan.updates_per_epoch;
      return plan;
    }
    const double steps = std::ceil(args.num_train_epochs * static_cast<double>(plan.updates_per_epoch));
    // 2^62 leaves headroom for the step and sample counters derived from it.
    if (!(steps < 0x1p62))
      throw ArgumentError(
          fmt::format("--num_train_epochs {} is too large: {} epochs of {} optimizer steps do not "
                      "fit in a 64-bit step count (use --max_steps for a very long run)",
                      args.num_train_epochs, args.num_train_epochs, plan.updates_per_epoch));
    plan.max_steps = static_cast<int64_t>(steps);
    plan.num_train_epochs = static_cast<int64_t>(std::ceil(args.num_train_epochs));
    return plan;
  }

 private:
  // A stream has no length: it trains for --max_steps, which it needs (HF's rule for an IterableDataset), in one
  // epoch, reading its next pass where one ends (HF would count a new epoch there).
  static TrainingPlan unsized(const TrainingArguments& args, int64_t world_size) {
    if (args.max_steps <= 0)
      throw ArgumentError(
          fmt::format("--max_steps must be set (> 0, got {}) to train on a streaming dataset, which "
                      "has no length to count epochs by",
                      args.max_steps));
    TrainingPlan plan;
    plan.batch_size = args.per_device_train_batch_size;
    plan.total_batch_size = plan.batch_size * args.gradient_accumulation_steps * world_size;
    plan.max_steps = args.max_steps;
    plan.updates_per_epoch = args.max_steps;
    plan.batches_per_epoch = args.max_steps * args.gradient_accumulation_steps;
    plan.num_samples = plan.batches_per_epoch * plan.batch_size;
    plan.num_train_epochs = 1;
    return plan;
  }
};

}  // namespace torchfit
