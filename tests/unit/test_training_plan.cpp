// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/loop/training_plan.hpp"

using namespace torchfit;

TEST_CASE("the training plan follows HF's arithmetic in doubles and refuses counts that do not fit",
          "[trainer][plan]") {
  TrainingArguments args;
  args.per_device_train_batch_size = 4;
  args.num_train_epochs = 1.1;
  const TrainingPlan fractional = TrainingPlan::make(args, 200);  // 50 updates per epoch
  CHECK(fractional.updates_per_epoch == 50);
  CHECK(fractional.max_steps == 56);  // ceil(1.1 * 50) in doubles is 56, not 55
  CHECK(fractional.num_train_epochs == 2);

  args.gradient_accumulation_steps = 3;
  args.max_steps = 10;
  const TrainingPlan by_steps = TrainingPlan::make(args, 10);  // 3 batches, 1 update per epoch
  CHECK(by_steps.batches_per_epoch == 3);
  CHECK(by_steps.updates_per_epoch == 1);
  CHECK(by_steps.num_train_epochs == 10);

  args.max_steps = -1;
  args.num_train_epochs = 1e300;
  CHECK_THROWS_AS(TrainingPlan::make(args, 10), ArgumentError);
  CHECK_THROWS_WITH(TrainingPlan::make(args, 10), Catch::Contains("--num_train_epochs 1e+300 is too large"));
  args.num_train_epochs = 1;
  args.dataloader_drop_last = true;
  CHECK_THROWS_AS(TrainingPlan::make(args, 3), ArgumentError);
  CHECK_THROWS_WITH(TrainingPlan::make(args, 3), Catch::Contains("--dataloader_drop_last drops every batch"));
  CHECK_THROWS_AS(TrainingPlan::make(args, 0), Error);
  CHECK_THROWS_WITH(TrainingPlan::make(args, 0), Catch::Contains("train dataset is empty"));
}
