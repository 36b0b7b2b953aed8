// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "torchfit/argument_parser.hpp"
#include "torchfit/detail/arg_parse.hpp"
#include "torchfit/detail/metric_direction.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// When to log or evaluate (HF's IntervalStrategy).
enum class IntervalStrategy { no, steps, epoch };
/// When to save a checkpoint (HF's SaveStrategy); `best` saves after each evaluation that improves the
/// metric.
enum class SaveStrategy { no, steps, epoch, best };
/// Which input elements num_input_tokens_seen counts (HF's include_num_input_tokens_seen): none, all of them,
/// or those that are not padding.
enum class TokenCounting { no, all, non_padding };

namespace detail {
template <>
struct EnumNames<IntervalStrategy> {
  static constexpr std::array<const char*, 3> values = {"no", "steps", "epoch"};
};
template <>
struct EnumNames<SaveStrategy> {
  static constexpr std::array<const char*, 4> values = {"no", "steps", "epoch", "best"};
};
template <>
struct EnumNames<TokenCounting> {
  static constexpr std::array<const char*, 3> values = {"no", "all", "non_padding"};
};
/// HF also takes a bool for include_num_input_tokens_seen: true means "all", false "no".
struct TokenCountingCodec : Codec<TokenCounting> {
  static std::string type() { return Codec<TokenCounting>::type() + "|bool"; }
  static TokenCounting parse(std::string_view where, const std::string& text) {
    if (const auto flag = bool_word(text)) return *flag ? TokenCounting::all : TokenCounting::no;
    return Codec<TokenCounting>::parse(where, text);
  }
  static TokenCounting from_json(std::string_view where, const json& j) {
    if (j.is_boolean()) return j.get<bool>() ? TokenCounting::all : TokenCounting::no;
    if (!j.is_string())
      bad_value(where, "one of " + join_quoted(EnumNames<TokenCounting>::values) + " or a bool", j.dump());
    return parse(where, j.get<std::string>());
  }
};
/// The lr_scheduler_type values the scheduler factory implements (HF's SchedulerType names).
inline constexpr std::array<std::string_view, 10> scheduler_names = {"linear",
                                                                     "cosine",
                                                                     "cosine_with_restarts",
                                                                     "polynomial",
                                                                     "constant",
                                                                     "constant_with_warmup",
                                                                     "inverse_sqrt",
                                                                     "reduce_lr_on_plateau",
                                                                     "cosine_with_min_lr",
                                                                     "warmup_stable_decay"};
/// The optim values create_optimizer implements.
inline constexpr std::array<std::string_view, 6> optimizer_names = {
    "adamw_torch", "adamw_torch_fused", "adam", "sgd", "adagrad", "rmsprop"};
}  // namespace detail

/// HF's name of the strategy ("no", "steps", "epoch").
inline std::string to_string(IntervalStrategy strategy) {
  return detail::EnumNames<IntervalStrategy>::values.at(static_cast<size_t>(strategy));
}
/// HF's name of the strategy ("no", "steps", "epoch", "best").
inline std::string to_string(SaveStrategy strategy) {
  return detail::EnumNames<SaveStrategy>::values.at(static_cast<size_t>(strategy));
}

/// The strategy named `text`; an unknown name throws ArgumentError listing the valid ones, `where` naming the
/// value in the message (e.g. "--eval_strategy").
inline IntervalStrategy interval_strategy_from_string(const std::string& text,
                                                      std::string_view where = "IntervalStrategy") {
  return detail::Codec<IntervalStrategy>::parse(where, text);
}
/// The save strategy named `text`; an unknown name throws ArgumentError listing the valid ones.
inline SaveStrategy save_strategy_from_string(const std::string& text,
                                              std::string_view where = "SaveStrategy") {
  return detail::Codec<SaveStrategy>::parse(where, text);
}

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
  bool terminate_on_nan = false;  // torchfit: stop when the training loss becomes NaN or infinite (Keras)

  SaveStrategy save_strategy = SaveStrategy::steps;
  double save_steps = 500;  // < 1 is a ratio of max_steps
  std::optional<int64_t> save_total_limit;
  bool save_safetensors = true;
  bool save_only_model = false;
  bool restore_callback_states_from_checkpoint = true;
  std::optional<std::string>
      resume_from_checkpoint;  // a path, or "last" for the newest checkpoint in output_dir
  bool ignore_data_skip = false;

  bool load_best_model_at_end = false;
  std::optional<std::string> metric_for_best_model;
  std::optional<bool> greater_is_better;

  int64_t seed = 42;
  std::optional<int64_t> data_seed;
  bool full_determinism = false;
  bool dataloader_drop_last = false;
  int64_t dataloader_num_workers = 0;
  bool dataloader_pin_memory = true;
  std::optional<std::vector<std::string>> label_names;  // None: "labels", then "label"

  bool use_cpu = false;
  bool tune_cpu_allocator = true;  // torchfit: keep freed CPU buffers in the process (cpu_allocator.hpp)
  bool bf16 = false;
  bool fp16 = false;

  std::optional<std::string> ddp_backend;          // "gloo" or "nccl"; None: nccl on CUDA, gloo on the CPU
  int64_t ddp_timeout = 1800;                      // seconds the rendezvous or a collective may wait
  std::optional<int64_t> ddp_bucket_cap_mb;        // None: 25, DistributedDataParallel's
  std::optional<bool> ddp_find_unused_parameters;  // None: true (HF's value for models other than HF's)
  std::optional<bool> ddp_broadcast_buffers;       // None: true, DistributedDataParallel's

  bool disable_tqdm = false;
  bool skip_memory_metrics = true;
  TokenCounting include_num_input_tokens_seen = TokenCounting::no;
  bool include_tokens_per_second = false;
  std::vector<std::string> report_to = {"none"};
  std::optional<std::string> run_name;

  /// HF's __post_init__ in its order (defaults filled in: logging_dir, eval_steps from logging_steps,
  /// metric_for_best_model, greater_is_better, do_eval; `~` expanded), then range checks HF leaves to later
  /// failures. Throws ArgumentError naming the flag, the value and what is accepted. Idempotent. The
  /// Trainer's constructor calls it on its copy; parsing only checks, so fields changed after parsing are
  /// honoured.
  void validate();

  /// The field table: flag names, help, parsing and JSON of every field (ArgumentParser reads it).
  static const ArgumentFields<TrainingArguments>& fields();

  /// Parses `--name value`, `--name=value`, `--flag [true|false]`, `--no_flag`; `none` unsets optional
  /// fields; unset flags keep the values of `defaults`. Then checks the result with validate() on a copy,
  /// leaving what validate() derives to the Trainer. Unknown flags, stray tokens and bad values throw
  /// ArgumentError. `--help` / `-h` prints help_text() to stdout and exits 0. ArgumentParser parses a
  /// program's own argument struct along with these.
  static TrainingArguments from_argv(int argc, const char* const* argv, const TrainingArguments& defaults);
  static TrainingArguments from_argv(int argc, char** argv, const TrainingArguments& defaults) {
    return from_argv(argc, static_cast<const char* const*>(argv), defaults);
  }
  static TrainingArguments from_argv(int argc, const char* const* argv) { return from_argv(argc, argv, {}); }
  static TrainingArguments from_argv(int argc, char** argv) { return from_argv(argc, argv, {}); }

  /// Like from_argv, but unknown `--x [value]` tokens and stray tokens are returned in `remaining` (in order)
  /// instead of failing, for programs that add flags of their own.
  static TrainingArguments parse_known_args(int argc, const char* const* argv,
                                            std::vector<std::string>& remaining);
  static TrainingArguments parse_known_args(int argc, char** argv, std::vector<std::string>& remaining) {
    return parse_known_args(argc, static_cast<const char* const*>(argv), remaining);
  }

  /// Usage line and one aligned line per field (flag, type, default, description), grouped by topic.
  static std::string help_text(const std::string& program);

  /// Every field under its HF name: enums as their names, unset optionals as null, report_to as a list.
  json to_json() const;
  /// to_json() as HF's `to_json_string` lays it out (2-space indent), keys sorted; no trailing newline.
  std::string to_json_string() const;
  /// Arguments from a to_json() object (missing keys keep their defaults), checked as from_argv does. Unknown
  /// keys and values of the wrong type throw ArgumentError naming the key.
  static TrainingArguments from_json(const json& object);
  /// from_json() of a file (training_args.json); errors name the file.
  static TrainingArguments load_from_json(const std::filesystem::path& path);
};

namespace detail {

/// The one table of TrainingArguments fields, in declaration order: from_argv, help_text, to_json and
/// from_json all read it.
inline const ArgumentFields<TrainingArguments>& training_fields() {
  using A = TrainingArguments;
  static const ArgumentFields<A> table =
      ArgumentFields<A>()
          .section("Output")
          .add("output_dir", &A::output_dir, "directory for checkpoints and the final model")
          .add("overwrite_output_dir", &A::overwrite_output_dir,
               "kept for HF compatibility; the Trainer ignores it")
          .add("do_train", &A::do_train, "for scripts: whether to train")
          .add("do_eval", &A::do_eval,
               "for scripts: whether to evaluate (set when --eval_strategy is not \"no\")")
          .add("do_predict", &A::do_predict, "for scripts: whether to predict")
          .section("Evaluation")
          .add("eval_strategy", &A::eval_strategy, "when to evaluate")
          .add<OptionalCodec<StepsCodec>>(
              "eval_steps", &A::eval_steps,
              "evaluate every N steps (< 1: ratio of max_steps); None: --logging_steps")
          .add("eval_delay", &A::eval_delay,
               "epochs or steps (per --eval_strategy) to wait before the first evaluation")
          .add("eval_on_start", &A::eval_on_start, "evaluate once before training (a sanity check)")
          .section("Batches")
          .add("per_device_train_batch_size", &A::per_device_train_batch_size, "samples per training batch")
          .add("per_device_eval_batch_size", &A::per_device_eval_batch_size, "samples per evaluation batch")
          .add("gradient_accumulation_steps", &A::gradient_accumulation_steps,
               "batches accumulated per optimizer step")
          .add("eval_accumulation_steps", &A::eval_accumulation_steps,
               "evaluation batches kept on the device before moving predictions to the CPU")
          .section("Optimizer")
          .add("optim", &A::optim, "optimizer: " + join_quoted(optimizer_names))
          .add("learning_rate", &A::learning_rate, "initial learning rate")
          .add("weight_decay", &A::weight_decay, "weight decay, except on biases and normalisation weights")
          .add("adam_beta1", &A::adam_beta1, "Adam beta1")
          .add("adam_beta2", &A::adam_beta2, "Adam beta2")
          .add("adam_epsilon", &A::adam_epsilon, "Adam epsilon")
          .add("max_grad_norm", &A::max_grad_norm, "gradient clipping norm; <= 0 disables clipping")
          .section("Schedule")
          .add("num_train_epochs", &A::num_train_epochs, "epochs to train (fractions allowed)")
          .add("max_steps", &A::max_steps, "optimizer steps to train; > 0 overrides --num_train_epochs")
          .add("lr_scheduler_type", &A::lr_scheduler_type,
               "learning-rate schedule: " + join_quoted(scheduler_names))
          .add("lr_scheduler_kwargs", &A::lr_scheduler_kwargs,
               "extra schedule parameters, e.g. '{\"power\": 2}'")
          .add("warmup_ratio", &A::warmup_ratio, "warmup as a fraction of max_steps")
          .add("warmup_steps", &A::warmup_steps, "warmup steps; > 0 overrides --warmup_ratio")
          .section("Logging")
          .add("logging_dir", &A::logging_dir,
               "tracker directory; empty: <output_dir>/runs/<%b%d_%H-%M-%S>_<hostname>")
          .add("logging_strategy", &A::logging_strategy, "when to log")
          .add<StepsCodec>("logging_steps", &A::logging_steps, "log every N steps (< 1: ratio of max_steps)")
          .add("logging_first_step", &A::logging_first_step, "also log the first step")
          .add("logging_nan_inf_filter", &A::logging_nan_inf_filter,
               "replace a NaN/inf step loss by the mean of the logged window")
          .add("terminate_on_nan", &A::terminate_on_nan,
               "stop training when the training loss becomes NaN or infinite (checked at logging steps)")
          .section("Checkpoints")
          .add("save_strategy", &A::save_strategy, "when to save a checkpoint")
          .add<StepsCodec>("save_steps", &A::save_steps, "save every N steps (< 1: ratio of max_steps)")
          .add("save_total_limit", &A::save_total_limit,
               "keep at most N checkpoints (the best one is always kept)")
          .add("save_safetensors", &A::save_safetensors,
               "kept for HF compatibility (weights are saved as safetensors)")
          .add("save_only_model", &A::save_only_model,
               "save the model only: no optimizer/scheduler/RNG, no resume")
          .add("restore_callback_states_from_checkpoint", &A::restore_callback_states_from_checkpoint,
               "restore stateful callbacks on resume")
          .add("resume_from_checkpoint", &A::resume_from_checkpoint,
               "checkpoint directory to resume from, or \"last\" for the newest in --output_dir")
          .add("ignore_data_skip", &A::ignore_data_skip,
               "on resume, start the epoch's data from the beginning")
          .section("Best model")
          .add("load_best_model_at_end", &A::load_best_model_at_end,
               "load the best checkpoint after training")
          .add("metric_for_best_model", &A::metric_for_best_model,
               "metric that ranks checkpoints; None: \"loss\" where one is needed")
          .add("greater_is_better", &A::greater_is_better,
               "whether larger metric values are better; None: false if --metric_for_best_model ends in "
               "\"loss\", else true (HF's rule: give it for error measures such as mse)")
          .section("Reproducibility and data")
          .add("seed", &A::seed, "random seed set at Trainer construction")
          .add("data_seed", &A::data_seed, "seed of the data order; None: --seed")
          .add("full_determinism", &A::full_determinism, "use deterministic algorithms (slower)")
          .add("dataloader_drop_last", &A::dataloader_drop_last, "drop the last incomplete training batch")
          .add("dataloader_num_workers", &A::dataloader_num_workers,
               "data loading worker threads; 0: main thread")
          .add(
              "dataloader_pin_memory", &A::dataloader_pin_memory,
              "on CUDA, copy batches to page-locked memory so that they reach the device without a host sync")
          .add("label_names", &A::label_names,
               "keys of a TensorDict batch holding the labels, comma-separated (several are stacked); None: "
               "\"labels\", then \"label\"")
          .section("Hardware")
          .add("use_cpu", &A::use_cpu, "train on the CPU even when CUDA is available")
          .add("tune_cpu_allocator", &A::tune_cpu_allocator,
               "on the CPU, let glibc's malloc keep freed buffers for reuse (faster steps, more memory held)")
          .add("bf16", &A::bf16, "bfloat16 mixed precision (CUDA)")
          .add("fp16", &A::fp16, "float16 mixed precision with loss scaling (CUDA)")
          .section("Several processes (torchrun)")
          .add("ddp_backend", &A::ddp_backend, "gloo or nccl; None: nccl on CUDA, gloo on the CPU")
          .add("ddp_timeout", &A::ddp_timeout,
               "seconds the rendezvous or a collective may wait for the other processes")
          .add("ddp_bucket_cap_mb", &A::ddp_bucket_cap_mb, "gradient all-reduce bucket size in MiB; None: 25")
          .add("ddp_find_unused_parameters", &A::ddp_find_unused_parameters,
               "allow parameters without gradient in a step; None: true")
          .add("ddp_broadcast_buffers", &A::ddp_broadcast_buffers,
               "copy rank 0's buffers to every rank before each forward; None: true")
          .section("Reporting")
          .add("disable_tqdm", &A::disable_tqdm, "print log lines instead of a progress bar")
          .add("skip_memory_metrics", &A::skip_memory_metrics, "do not add memory usage to metrics")
          .add<TokenCountingCodec>("include_num_input_tokens_seen", &A::include_num_input_tokens_seen,
                                   "count input elements in num_input_tokens_seen (non_padding: "
                                   "Trainer::set_pad_token_id)")
          .add("include_tokens_per_second", &A::include_tokens_per_second,
               "add train_tokens_per_second to the training summary")
          .add("report_to", &A::report_to,
               "trackers, comma-separated: \"all\", \"none\" or integration names")
          .add("run_name", &A::run_name, "run name shown by trackers");
  return table;
}

}  // namespace detail

inline void TrainingArguments::validate() {
  using detail::as_literal;
  using detail::require;
  require(!output_dir.empty(), "--output_dir must not be empty (the default is \"trainer_output\")");
  output_dir = detail::expand_user(output_dir);
  if (logging_dir.empty())
    logging_dir = (std::filesystem::path(output_dir) / detail::default_logdir()).string();
  logging_dir = detail::expand_user(logging_dir);
  // HF converts the names to enums first, failing on unknown ones.
  require(detail::contains(detail::scheduler_names, lr_scheduler_type),
          "--lr_scheduler_type expects one of {} (got {})", detail::join_quoted(detail::scheduler_names),
          as_literal(lr_scheduler_type));
  require(detail::contains(detail::optimizer_names, optim), "--optim expects one of {} (got {})",
          detail::join_quoted(detail::optimizer_names), as_literal(optim));
  if (eval_strategy != IntervalStrategy::no) do_eval = true;

  // Not checked by HF; a negative or non-finite value would silently misbehave later.
  for (const auto& [flag, value] : {std::pair<const char*, double>{"--logging_steps", logging_steps},
                                    {"--save_steps", save_steps},
                                    {"--eval_steps", eval_steps.value_or(0)},
                                    {"--eval_delay", eval_delay},
                                    {"--learning_rate", learning_rate},
                                    {"--weight_decay", weight_decay},
                                    {"--adam_epsilon", adam_epsilon}})
    require(std::isfinite(value) && value >= 0, "{} must be a finite number >= 0 (got {})", flag, value);

  if (eval_strategy == IntervalStrategy::steps && eval_steps.value_or(0) == 0) {
    require(logging_steps > 0,
            "--eval_steps must be > 0 when --eval_strategy is \"steps\" (got {}); it falls back to "
            "--logging_steps, which is 0 too",
            eval_steps ? fmt::format("{}", *eval_steps) : "None");
    log::info("using --logging_steps to initialize --eval_steps to {}", logging_steps);
    eval_steps = logging_steps;
  }
  require(logging_strategy != IntervalStrategy::steps || logging_steps != 0,
          "--logging_steps must be > 0 when --logging_strategy is \"steps\" (got 0)");
  for (const auto& [flag, active, value] :
       {std::tuple<const char*, bool, double>{"--logging_steps", logging_strategy == IntervalStrategy::steps,
                                              logging_steps},
        {"--eval_steps", eval_strategy == IntervalStrategy::steps, eval_steps.value_or(0)},
        {"--save_steps", save_strategy == SaveStrategy::steps, save_steps}})
    require(!active || value <= 1 || value == std::floor(value),
            "{} must be an integer if bigger than 1 (got {})", flag, value);

  if (load_best_model_at_end && save_strategy != SaveStrategy::best) {
    require(to_string(eval_strategy) == to_string(save_strategy),
            "--load_best_model_at_end requires the save and eval strategy to match, but found\n- Evaluation "
            "strategy: {}\n- Save strategy: {}\n(set --save_strategy to \"{}\", or to \"best\")",
            to_string(eval_strategy), to_string(save_strategy), to_string(eval_strategy));
    const double save = save_steps;
    const double eval = eval_steps.value_or(0);
    if (eval_strategy == IntervalStrategy::steps && std::fmod(save, eval) != 0) {
      require((eval < 1) == (save < 1),
              "--load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, "
              "which cannot be guaranteed when mixing ratio and absolute steps (got --save_steps {} and "
              "--eval_steps {})",
              save, eval);
      // Ratios are compared scaled up, as HF does, to absorb floating-point noise (0.3 is a multiple of 0.1).
      require(eval >= 1 || std::fmod(save * 1e6, eval * 1e6) == 0,
              "--load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, "
              "but found --save_steps {}, which is not a multiple of --eval_steps {}",
              save, eval);
      require(eval < 1,
              "--load_best_model_at_end requires the saving steps to be a round multiple of the evaluation "
              "steps, but found --save_steps {}, which is not a round multiple of --eval_steps {}",
              save, eval);
    }
  }

  if ((load_best_model_at_end || lr_scheduler_type == "reduce_lr_on_plateau") && !metric_for_best_model)
    metric_for_best_model = "loss";
  require(!metric_for_best_model || !metric_for_best_model->empty(),
          "--metric_for_best_model must name a metric such as \"loss\" or \"accuracy\" (got \"\")");
  if (!greater_is_better && metric_for_best_model) {
    greater_is_better = !detail::ends_with(*metric_for_best_model, "loss");
    if (*greater_is_better)
      detail::warn_if_error_measure(*metric_for_best_model, "--greater_is_better false", "true");
  }
  require(lr_scheduler_type != "reduce_lr_on_plateau" || eval_strategy != IntervalStrategy::no,
          "--lr_scheduler_type \"reduce_lr_on_plateau\" requires an eval strategy (--eval_strategy is "
          "\"no\"; use \"steps\" or \"epoch\")");
  // HF checks this in Trainer.__init__; here it fails before any work is done.
  require(save_strategy != SaveStrategy::best || metric_for_best_model.has_value(),
          "--save_strategy \"best\" requires --metric_for_best_model (got None)");

  // Names are resolved against the compiled-in integrations when the Trainer is built.
  const std::string report_list = fmt::format("{}", fmt::join(report_to, ","));
  for (const std::string& name : report_to) {
    require(!name.empty(), "--report_to has an empty name (got {})", as_literal(report_list));
    require(report_to.size() == 1 || (name != "none" && name != "all"),
            "--report_to {} cannot be combined with other names (got {})", as_literal(name),
            as_literal(report_list));
  }
  if (label_names) {
    for (const std::string& name : *label_names)
      require(!name.empty(), "--label_names has an empty name (got {})",
              as_literal(fmt::format("{}", fmt::join(*label_names, ","))));
  }
  require(warmup_ratio >= 0 && warmup_ratio <= 1, "--warmup_ratio must be in [0, 1] (got {})", warmup_ratio);
  require(warmup_steps >= 0, "--warmup_steps must be >= 0 (got {})", warmup_steps);
  if (warmup_ratio > 0 && warmup_steps > 0)
    log::info("both --warmup_ratio and --warmup_steps given; --warmup_steps overrides --warmup_ratio");

  // Range checks HF leaves to torch or to later failures.
  for (const auto& [flag, value] :
       {std::pair<const char*, int64_t>{"--per_device_train_batch_size", per_device_train_batch_size},
        {"--per_device_eval_batch_size", per_device_eval_batch_size},
        {"--gradient_accumulation_steps", gradient_accumulation_steps},
        {"--eval_accumulation_steps", eval_accumulation_steps.value_or(1)},
        {"--save_total_limit", save_total_limit.value_or(1)}})
    require(value >= 1, "{} must be >= 1 (got {})", flag, value);
  for (const auto& [flag, value] :
       {std::pair<const char*, double>{"--adam_beta1", adam_beta1}, {"--adam_beta2", adam_beta2}})
    require(value >= 0 && value < 1, "{} must be in [0, 1) (got {})", flag, value);
  require(!std::isnan(max_grad_norm), "--max_grad_norm must be a number (<= 0 disables clipping) (got nan)");
  // HF trains one step with max_steps 0 (and divides by zero with a ratio interval); a run that trains nothing
  // is refused instead.
  require(max_steps != 0,
          "--max_steps 0 would train nothing: give a positive step count, or -1 (the default) to train "
          "--num_train_epochs epochs");
  require(max_steps > 0 || (std::isfinite(num_train_epochs) && num_train_epochs > 0),
          "--num_train_epochs must be > 0 when --max_steps is not set (got {})", num_train_epochs);
  require(!(fp16 && bf16), "--fp16 and --bf16 cannot both be set; choose one");
  require(dataloader_num_workers >= 0, "--dataloader_num_workers must be >= 0 (got {})",
          dataloader_num_workers);
  require(lr_scheduler_kwargs.is_object(), "--lr_scheduler_kwargs must be a JSON object (got {})",
          lr_scheduler_kwargs.dump());
}

inline const ArgumentFields<TrainingArguments>& TrainingArguments::fields() {
  return detail::training_fields();
}

inline TrainingArguments TrainingArguments::from_argv(int argc, const char* const* argv,
                                                      const TrainingArguments& defaults) {
  return std::get<0>(ArgumentParser<TrainingArguments>(defaults).parse(argc, argv));
}

inline TrainingArguments TrainingArguments::parse_known_args(int argc, const char* const* argv,
                                                             std::vector<std::string>& remaining) {
  return std::get<0>(ArgumentParser<TrainingArguments>().parse_known_args(argc, argv, remaining));
}

inline std::string TrainingArguments::help_text(const std::string& program) {
  return ArgumentParser<TrainingArguments>().help_text(program);
}

inline json TrainingArguments::to_json() const { return fields().to_json(*this); }

inline std::string TrainingArguments::to_json_string() const {
  return detail::python_json_dumps(to_json(), 2, true);
}

inline TrainingArguments TrainingArguments::from_json(const json& object) {
  return std::get<0>(ArgumentParser<TrainingArguments>().from_json(object));
}

inline TrainingArguments TrainingArguments::load_from_json(const std::filesystem::path& path) {
  return std::get<0>(ArgumentParser<TrainingArguments>().load_from_json(path));
}

}  // namespace torchfit
