// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit {

/// When to log or evaluate (HF's IntervalStrategy).
enum class IntervalStrategy { no, steps, epoch };
/// When to save a checkpoint (HF's SaveStrategy); `best` saves after each evaluation that improves the metric.
enum class SaveStrategy { no, steps, epoch, best };

/// Everything the training loop is configured by, with Hugging Face's names and v4.57 defaults
/// (differences: report_to defaults to "none"; restore_callback_states_from_checkpoint defaults to true).
struct TrainingArguments {
  std::string output_dir = "trainer_output";
  bool overwrite_output_dir = false;
  bool do_train = false;
  bool do_eval = false;
  bool do_predict = false;

  IntervalStrategy eval_strategy = IntervalStrategy::no;
  std::optional<double> eval_steps;  // falls back to logging_steps; < 1 is a ratio of max_steps
  double eval_delay = 0;             // epochs or steps, matching eval_strategy
  bool eval_on_start = false;

  int64_t per_device_train_batch_size = 8;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  std::optional<int64_t> eval_accumulation_steps;

  std::string optim = "adamw_torch";
  double learning_rate = 5e-5;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // <= 0 disables clipping and grad_norm logging

  double num_train_epochs = 3.0;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  std::string lr_scheduler_type = "linear";
  json lr_scheduler_kwargs = json::object();
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;

  std::string logging_dir;  // empty -> <output_dir>/runs/<%b%d_%H-%M-%S>_<hostname>, filled by validate()
  IntervalStrategy logging_strategy = IntervalStrategy::steps;
  double logging_steps = 500;  // < 1 is a ratio of max_steps
  bool logging_first_step = false;
  bool logging_nan_inf_filter = true;

  SaveStrategy save_strategy = SaveStrategy::steps;
  double save_steps = 500;  // < 1 is a ratio of max_steps
  std::optional<int64_t> save_total_limit;
  bool save_safetensors = true;
  bool save_only_model = false;
  bool restore_callback_states_from_checkpoint = true;
  std::optional<std::string> resume_from_checkpoint;  // a path, or "last" for the newest checkpoint in output_dir
  bool ignore_data_skip = false;

  bool load_best_model_at_end = false;
  std::optional<std::string> metric_for_best_model;
  std::optional<bool> greater_is_better;

  int64_t seed = 42;
  std::optional<int64_t> data_seed;
  bool full_determinism = false;
  bool dataloader_drop_last = false;
  int64_t dataloader_num_workers = 0;

  bool use_cpu = false;
  bool bf16 = false;
  bool fp16 = false;

  bool disable_tqdm = false;
  bool skip_memory_metrics = true;
  std::vector<std::string> report_to = {"none"};
  std::optional<std::string> run_name;
};

}  // namespace torchfit
