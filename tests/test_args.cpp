// SPDX-License-Identifier: MIT
// TrainingArguments: HF defaults, HF's __post_init__ rules and messages, command-line and JSON forms, help
// text.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
#include "torchfit/training_args.hpp"

using namespace torchfit;
using test::read_file;
using test::TempDir;
using test::write_file;

using torchfit::test::ScopedEnv;

namespace {

std::vector<const char*> make_argv(const std::vector<std::string>& tokens) {
  std::vector<const char*> argv{"train"};
  for (const auto& t : tokens) argv.push_back(t.c_str());
  return argv;
}

TrainingArguments parse(const std::vector<std::string>& tokens) {
  const auto argv = make_argv(tokens);
  return TrainingArguments::from_argv(static_cast<int>(argv.size()), argv.data());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ArgumentError& e) {
    return e.what();
  }
  return "(no ArgumentError)";
}

std::string parse_error(const std::vector<std::string>& tokens) {
  return error_of([&] { parse(tokens); });
}

std::string validate_error(TrainingArguments args) {
  return error_of([&] { args.validate(); });
}

// Runs `f` in a child process: its exit status (3 if it returns) and what it printed on stdout.
std::pair<int, std::string> exit_status_and_stdout(const std::function<void()>& f) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::cout.flush();
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    f();
    _exit(3);
  }
  close(fds[1]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) > 0;) out.append(buffer, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string hostname() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

}  // namespace

TEST_CASE("defaults are HF v4.57's, except report_to and restore_callback_states_from_checkpoint", "[args]") {
  // HF: report_to None -> "all" (v5: "none"); restore_callback_states_from_checkpoint False.
  const json expected = json::parse(R"({
    "output_dir": "trainer_output", "overwrite_output_dir": false,
    "do_train": false, "do_eval": false, "do_predict": false,
    "eval_strategy": "no", "eval_steps": null, "eval_delay": 0.0, "eval_on_start": false,
    "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1, "eval_accumulation_steps": null,
    "optim": "adamw_torch", "learning_rate": 5e-05, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_epsilon": 1e-08, "max_grad_norm": 1.0,
    "num_train_epochs": 3.0, "max_steps": -1, "lr_scheduler_type": "linear", "lr_scheduler_kwargs": {},
    "warmup_ratio": 0.0, "warmup_steps": 0,
    "logging_dir": "", "logging_strategy": "steps", "logging_steps": 500, "logging_first_step": false,
    "logging_nan_inf_filter": true, "terminate_on_nan": false,
    "save_strategy": "steps", "save_steps": 500, "save_total_limit": null, "save_safetensors": true,
    "save_only_model": false, "restore_callback_states_from_checkpoint": true, "resume_from_checkpoint": null,
    "ignore_data_skip": false,
    "load_best_model_at_end": false, "metric_for_best_model": null, "greater_is_better": null,
    "seed": 42, "data_seed": null, "full_determinism": false, "dataloader_drop_last": false,
    "dataloader_num_workers": 0, "dataloader_pin_memory": true, "label_names": null,
    "use_cpu": false, "tune_cpu_allocator": true, "bf16": false, "fp16": false,
    "ddp_backend": null, "ddp_timeout": 1800, "ddp_bucket_cap_mb": null, "ddp_find_unused_parameters": null,
    "ddp_broadcast_buffers": null,
    "disable_tqdm": false, "skip_memory_metrics": true, "include_num_input_tokens_seen": "no",
    "include_tokens_per_second": false, "report_to": ["none"], "run_name": null
  })");
  // Same keys, same order (declaration order), same values and JSON types (ints stay ints).
  CHECK(TrainingArguments().to_json().dump() == expected.dump());
}

TEST_CASE("validate fills in HF's defaults: logging_dir, do_eval, eval_steps, metric, greater_is_better",
          "[args]") {
  TrainingArguments args;
  args.output_dir = "out";
  args.eval_strategy = IntervalStrategy::steps;
  args.logging_steps = 50;
  args.load_best_model_at_end = true;
  args.save_steps = 100;
  args.validate();
  const std::regex logdir("out/runs/[A-Z][a-z]{2}[0-9]{2}_[0-9]{2}-[0-9]{2}-[0-9]{2}_(.*)");
  std::smatch match;
  REQUIRE(std::regex_match(args.logging_dir, match, logdir));
  CHECK(match[1] == hostname());
  CHECK(args.do_eval);
  CHECK(args.eval_steps == 50.0);
  CHECK(args.metric_for_best_model == "loss");
  CHECK(args.greater_is_better == false);

  SECTION("and is idempotent") {
    const json first = args.to_json();
    args.validate();
    CHECK(args.to_json() == first);
  }
}

TEST_CASE("validate expands a leading ~ in output_dir and logging_dir from $HOME", "[args]") {
  ScopedEnv home("HOME", "/home/someone");
  TrainingArguments args;
  args.output_dir = "~/runs/a";
  args.validate();
  CHECK(args.output_dir == "/home/someone/runs/a");
  CHECK(args.logging_dir.rfind("/home/someone/runs/a/runs/", 0) == 0);

  TrainingArguments other;
  other.output_dir = "~other/x";  // another user's home: left alone, as Python does without that user
  other.logging_dir = "~";
  other.validate();
  CHECK(other.output_dir == "~other/x");
  CHECK(other.logging_dir == "/home/someone");
}

TEST_CASE("eval_steps falls back to logging_steps, also when 0", "[args]") {
  TrainingArguments args;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 0.0;
  args.logging_steps = 0.25;
  args.validate();
  CHECK(args.eval_steps == 0.25);

  TrainingArguments given;
  given.eval_strategy = IntervalStrategy::steps;
  given.eval_steps = 7;
  given.validate();
  CHECK(given.eval_steps == 7.0);

  TrainingArguments epoch;
  epoch.eval_strategy = IntervalStrategy::epoch;
  epoch.validate();
  CHECK_FALSE(epoch.eval_steps.has_value());
}

TEST_CASE("metric_for_best_model defaults to loss for load-best and plateau, greater_is_better follows it",
          "[args]") {
  TrainingArguments plateau;
  plateau.lr_scheduler_type = "reduce_lr_on_plateau";
  plateau.eval_strategy = IntervalStrategy::epoch;
  plateau.validate();
  CHECK(plateau.metric_for_best_model == "loss");
  CHECK(plateau.greater_is_better == false);

  TrainingArguments accuracy;
  accuracy.metric_for_best_model = "accuracy";
  accuracy.validate();
  CHECK(accuracy.greater_is_better == true);

  TrainingArguments eval_loss;
  eval_loss.metric_for_best_model = "eval_loss";
  eval_loss.validate();
  CHECK(eval_loss.greater_is_better == false);

  TrainingArguments explicit_gib;
  explicit_gib.metric_for_best_model = "eval_loss";
  explicit_gib.greater_is_better = true;
  explicit_gib.validate();
  CHECK(explicit_gib.greater_is_better == true);

  TrainingArguments best;  // save_strategy "best" gets no default metric, as in HF
  best.save_strategy = SaveStrategy::best;
  CHECK(validate_error(best) == "--save_strategy \"best\" requires --metric_for_best_model (got None)");
  best.metric_for_best_model = "accuracy";
  best.validate();
  CHECK(best.greater_is_better == true);
}

TEST_CASE("load_best_model_at_end: strategies must match and save_steps be a multiple of eval_steps",
          "[args]") {
  TrainingArguments args;
  args.load_best_model_at_end = true;
  args.eval_strategy = IntervalStrategy::steps;
  args.save_strategy = SaveStrategy::epoch;
  CHECK(validate_error(args) ==
        "--load_best_model_at_end requires the save and eval strategy to match, but found\n- Evaluation "
        "strategy: steps\n- Save strategy: epoch\n(set --save_strategy to \"steps\", or to \"best\")");

  args.save_strategy = SaveStrategy::best;  // "best" saves after evaluations; any eval strategy fits
  args.metric_for_best_model = "accuracy";
  args.validate();

  const auto steps = [](double save, double eval) {
    TrainingArguments a;
    a.load_best_model_at_end = true;
    a.eval_strategy = IntervalStrategy::steps;
    a.save_steps = save;
    a.eval_steps = eval;
    return validate_error(a);
  };
  CHECK(steps(500, 100) == "(no ArgumentError)");
  CHECK(steps(250, 100) ==
        "--load_best_model_at_end requires the saving steps to be a round multiple of the evaluation steps, "
        "but found --save_steps 250, which is not a round multiple of --eval_steps 100");
  CHECK(steps(100, 0.3) ==
        "--load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, which "
        "cannot be guaranteed when mixing ratio and absolute steps (got --save_steps 100 and --eval_steps "
        "0.3)");
  CHECK(steps(0.5, 100) ==
        "--load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, which "
        "cannot be guaranteed when mixing ratio and absolute steps (got --save_steps 0.5 and --eval_steps "
        "100)");
  CHECK(steps(0.3, 0.1) == "(no ArgumentError)");  // 0.3 % 0.1 != 0 in floating point; HF scales by 1e6
  CHECK(steps(0.25, 0.5) ==
        "--load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, but "
        "found --save_steps 0.25, which is not a multiple of --eval_steps 0.5");
}

TEST_CASE("steps values above 1 must be whole, for the strategies that use them", "[args]") {
  TrainingArguments logging;
  logging.logging_steps = 2.5;
  CHECK(validate_error(logging) == "--logging_steps must be an integer if bigger than 1 (got 2.5)");
  logging.logging_strategy = IntervalStrategy::epoch;  // unused, so not checked (HF)
  logging.validate();

  TrainingArguments eval;
  eval.eval_strategy = IntervalStrategy::steps;
  eval.eval_steps = 3.5;
  CHECK(validate_error(eval) == "--eval_steps must be an integer if bigger than 1 (got 3.5)");

  TrainingArguments save;
  save.save_steps = 10.25;
  CHECK(validate_error(save) == "--save_steps must be an integer if bigger than 1 (got 10.25)");

  TrainingArguments ratios;
  ratios.logging_steps = 0.1;
  ratios.save_steps = 0.5;
  ratios.validate();
}

TEST_CASE("each validation rule names the flag, the value and what is accepted", "[args]") {
  using Mutate = std::function<void(TrainingArguments&)>;
  const std::vector<std::pair<Mutate, std::string>> cases = {
      {[](auto& a) {
         a.eval_strategy = IntervalStrategy::steps;
         a.eval_steps = 0.0;
         a.logging_steps = 0;
       },
       "--eval_steps must be > 0 when --eval_strategy is \"steps\" (got 0); it falls back to "
       "--logging_steps, which is 0 too"},
      {[](auto& a) { a.logging_steps = 0; },
       "--logging_steps must be > 0 when --logging_strategy is \"steps\" (got 0)"},
      {[](auto& a) { a.save_steps = -1; }, "--save_steps must be a finite number >= 0 (got -1)"},
      {[](auto& a) { a.eval_delay = -2; }, "--eval_delay must be a finite number >= 0 (got -2)"},
      {[](auto& a) { a.learning_rate = -1e-3; }, "--learning_rate must be a finite number >= 0 (got -0.001)"},
      {[](auto& a) { a.learning_rate = std::numeric_limits<double>::infinity(); },
       "--learning_rate must be a finite number >= 0 (got inf)"},
      {[](auto& a) { a.lr_scheduler_type = "reduce_lr_on_plateau"; },
       "--lr_scheduler_type \"reduce_lr_on_plateau\" requires an eval strategy (--eval_strategy is \"no\"; "
       "use \"steps\" or \"epoch\")"},
      {[](auto& a) { a.lr_scheduler_type = "cosine_annealing"; },
       "--lr_scheduler_type expects one of \"linear\", \"cosine\", \"cosine_with_restarts\", \"polynomial\", "
       "\"constant\", \"constant_with_warmup\", \"inverse_sqrt\", \"reduce_lr_on_plateau\", "
       "\"cosine_with_min_lr\", \"warmup_stable_decay\" (got \"cosine_annealing\")"},
      {[](auto& a) { a.optim = "lion"; },
       "--optim expects one of \"adamw_torch\", \"adamw_torch_fused\", \"adam\", \"sgd\", \"adagrad\", "
       "\"rmsprop\" (got \"lion\")"},
      {[](auto& a) { a.warmup_ratio = 1.5; }, "--warmup_ratio must be in [0, 1] (got 1.5)"},
      {[](auto& a) { a.warmup_steps = -1; }, "--warmup_steps must be >= 0 (got -1)"},
      {[](auto& a) { a.per_device_train_batch_size = 0; },
       "--per_device_train_batch_size must be >= 1 (got 0)"},
      {[](auto& a) { a.per_device_eval_batch_size = -4; },
       "--per_device_eval_batch_size must be >= 1 (got -4)"},
      {[](auto& a) { a.gradient_accumulation_steps = 0; },
       "--gradient_accumulation_steps must be >= 1 (got 0)"},
      {[](auto& a) { a.eval_accumulation_steps = 0; }, "--eval_accumulation_steps must be >= 1 (got 0)"},
      {[](auto& a) { a.save_total_limit = 0; }, "--save_total_limit must be >= 1 (got 0)"},
      {[](auto& a) { a.adam_beta1 = 1.0; }, "--adam_beta1 must be in [0, 1) (got 1)"},
      {[](auto& a) { a.adam_beta2 = -0.5; }, "--adam_beta2 must be in [0, 1) (got -0.5)"},
      {[](auto& a) { a.num_train_epochs = 0; },
       "--num_train_epochs must be > 0 when --max_steps is not set (got 0)"},
      {[](auto& a) {
         a.fp16 = true;
         a.bf16 = true;
       },
       "--fp16 and --bf16 cannot both be set; choose one"},
      {[](auto& a) { a.dataloader_num_workers = -1; }, "--dataloader_num_workers must be >= 0 (got -1)"},
      {[](auto& a) {
         a.report_to = {"none", "csv"};
       },
       "--report_to \"none\" cannot be combined with other names (got \"none,csv\")"},
      {[](auto& a) {
         a.report_to = {"csv", "all"};
       },
       "--report_to \"all\" cannot be combined with other names (got \"csv,all\")"},
      {[](auto& a) {
         a.report_to = {"csv", ""};
       },
       "--report_to has an empty name (got \"csv,\")"},
      {[](auto& a) { a.output_dir = ""; },
       "--output_dir must not be empty (the default is \"trainer_output\")"},
      {[](auto& a) { a.metric_for_best_model = ""; },
       "--metric_for_best_model must name a metric such as \"loss\" or \"accuracy\" (got \"\")"},
      {[](auto& a) { a.lr_scheduler_kwargs = json::array({1}); },
       "--lr_scheduler_kwargs must be a JSON object (got [1])"},
  };
  for (const auto& [mutate, message] : cases) {
    TrainingArguments args;
    mutate(args);
    CHECK(validate_error(args) == message);
  }

  TrainingArguments by_steps;  // epochs do not matter when max_steps is set
  by_steps.num_train_epochs = 0;
  by_steps.max_steps = 10;
  by_steps.validate();
}

TEST_CASE("from_argv reads --name value, --name=value, bare and valued bool flags, none, lists and JSON",
          "[args]") {
  // clang-format off
  const auto args = parse({"--output_dir", "out", "--learning_rate=1e-3", "--max_steps", "-1",
                           "--num_train_epochs", "+2.5", "--do_train", "--fp16", "FALSE", "--bf16=Yes",
                           "--logging_first_step", "--seed", "7", "--save_safetensors=0", "--disable_tqdm", "t",
                           "--eval_strategy", "epoch", "--save_strategy=epoch", "--report_to", "tensorboard, csv",
                           "--lr_scheduler_type", "polynomial",
                           "--lr_scheduler_kwargs", R"({"power": 2, "lr_end": 1e-6})",
                           "--save_total_limit", "3", "--save_total_limit", "None", "--data_seed", "11",
                           "--greater_is_better", "none", "--metric_for_best_model", "accuracy",
                           "--logging_nan_inf_filter", "--eval_steps=0.5", "--logging_dir=logs=1",
                           "--run_name", "a run"});
  // clang-format on
  CHECK(args.output_dir == "out");
  CHECK(args.learning_rate == 1e-3);
  CHECK(args.max_steps == -1);
  CHECK(args.num_train_epochs == 2.5);
  CHECK(args.do_train);
  CHECK_FALSE(args.fp16);
  CHECK(args.bf16);
  CHECK(args.logging_first_step);
  CHECK(args.seed == 7);
  CHECK_FALSE(args.save_safetensors);
  CHECK(args.disable_tqdm);
  CHECK(args.eval_strategy == IntervalStrategy::epoch);
  CHECK(args.save_strategy == SaveStrategy::epoch);
  CHECK(args.report_to == std::vector<std::string>{"tensorboard", "csv"});
  CHECK(args.lr_scheduler_type == "polynomial");
  CHECK(args.lr_scheduler_kwargs == json::parse(R"({"power": 2, "lr_end": 1e-6})"));
  CHECK_FALSE(args.save_total_limit.has_value());  // the last occurrence wins
  CHECK(args.data_seed == 11);
  CHECK_FALSE(args.greater_is_better.has_value());  // None: derived when the Trainer validates its copy
  CHECK(args.logging_nan_inf_filter);
  CHECK(args.eval_steps == 0.5);
  CHECK(args.run_name == "a run");
  CHECK(args.logging_dir == "logs=1");  // split at the first "="
  CHECK_FALSE(args.do_eval);            // derived by validate(), which parsing runs on a copy only
  TrainingArguments validated = args;
  validated.validate();
  CHECK(validated.greater_is_better == true);
  CHECK(validated.do_eval);
}

TEST_CASE("from_argv: a bool flag takes only a bool word after it, --no_NAME clears a bool", "[args]") {
  const auto args = parse({"--load_best_model_at_end", "--eval_strategy", "epoch", "--save_strategy", "epoch",
                           "--no_save_safetensors", "--no_logging_nan_inf_filter", "--use_cpu"});
  CHECK(args.load_best_model_at_end);
  CHECK_FALSE(args.save_safetensors);
  CHECK_FALSE(args.logging_nan_inf_filter);
  CHECK(args.use_cpu);
  CHECK(parse({"--greater_is_better", "--metric_for_best_model", "loss"}).greater_is_better == true);
  CHECK(parse({"--greater_is_better", "n", "--metric_for_best_model", "accuracy"}).greater_is_better ==
        false);
}

TEST_CASE("from_argv rejects bad input with the flag and the value in the message", "[args]") {
  CHECK(parse_error({"--max_steps", "abc"}) == "--max_steps expects an integer (got \"abc\")");
  CHECK(parse_error({"--learning_rate", "1e-3x"}) == "--learning_rate expects a number (got \"1e-3x\")");
  CHECK(parse_error({"--per_device_train_batch_size", "3.5"}) ==
        "--per_device_train_batch_size expects an integer (got \"3.5\")");
  CHECK(parse_error({"--seed", "99999999999999999999"}) ==
        "--seed expects an integer (got \"99999999999999999999\")");
  CHECK(parse_error({"--warmup_ratio", ""}) == "--warmup_ratio expects a number (got \"\")");
  CHECK(parse_error({"--lerning_rate", "1"}) ==
        "unknown flag --lerning_rate (did you mean --learning_rate?); see --help");
  CHECK(parse_error({"--frobnicate"}) == "unknown flag --frobnicate; see --help");
  CHECK(parse_error({"out"}) == "unexpected argument \"out\" (flags are --name value)");
  CHECK(parse_error({"--max_steps", "10", "20"}) == "unexpected argument \"20\" (flags are --name value)");
  CHECK(parse_error({"--output_dir"}) == "--output_dir expects a value (str)");
  CHECK(parse_error({"--max_steps", "--fp16"}) == "--max_steps expects a value (int)");
  CHECK(parse_error({"--eval_strategy", "sometimes"}) ==
        "--eval_strategy expects one of \"no\", \"steps\", \"epoch\" (got \"sometimes\")");
  CHECK(parse_error({"--eval_strategy", "best"}) ==
        "--eval_strategy expects one of \"no\", \"steps\", \"epoch\" (got \"best\")");
  CHECK(parse_error({"--fp16=maybe"}) == "--fp16 expects true or false (got \"maybe\")");
  CHECK(parse_error({"--greater_is_better=perhaps"}) ==
        "--greater_is_better expects true or false (got \"perhaps\")");
  CHECK(parse_error({"--no_fp16=true"}) == "--no_fp16 takes no value (got \"true\")");
  CHECK(parse_error({"--no_greater_is_better"}) ==  // only plain bools have a --no_ form
        "unknown flag --no_greater_is_better (did you mean --greater_is_better?); see --help");
  CHECK(parse_error({"--lr_scheduler_kwargs", "[1, 2]"}) ==
        "--lr_scheduler_kwargs expects a JSON object such as '{\"power\": 2}' (got \"[1, 2]\")");
  CHECK(parse_error({"--lr_scheduler_kwargs", "{power: 2}"}) ==
        "--lr_scheduler_kwargs expects a JSON object such as '{\"power\": 2}' (got \"{power: 2}\")");
  CHECK(parse_error({"--save_total_limit", "0"}) == "--save_total_limit must be >= 1 (got 0)");
  CHECK(parse_error({"--data_seed", "nothing"}) == "--data_seed expects an integer (got \"nothing\")");
  CHECK(parse_error({"--max_steps", "\xff"}) == "--max_steps expects an integer (got \"\xef\xbf\xbd\")");
}

TEST_CASE("parse_known_args returns unknown flags, their values and stray tokens in order", "[args]") {
  const auto argv = make_argv({"--data_dir", "/data", "--max_steps", "5", "input.txt", "--verbose",
                               "--depth=3", "--fp16", "--shuffle", "--output_dir", "o"});
  std::vector<std::string> remaining{"stale"};
  const auto args =
      TrainingArguments::parse_known_args(static_cast<int>(argv.size()), argv.data(), remaining);
  CHECK(remaining ==
        std::vector<std::string>{"--data_dir", "/data", "input.txt", "--verbose", "--depth=3", "--shuffle"});
  CHECK(args.max_steps == 5);
  CHECK(args.fp16);
  CHECK(args.output_dir == "o");
  // Known flags are still checked strictly.
  CHECK(error_of([] {
          const auto bad = make_argv({"--data_dir", "/d", "--max_steps", "x"});
          std::vector<std::string> rest;
          TrainingArguments::parse_known_args(static_cast<int>(bad.size()), bad.data(), rest);
        }) == "--max_steps expects an integer (got \"x\")");
}

TEST_CASE("--help prints help_text to stdout and exits 0", "[args]") {
  for (const char* flag : {"--help", "-h"}) {
    const auto [status, out] = exit_status_and_stdout([&] {
      const char* argv[] = {"/usr/bin/my_train", "--max_steps", "3", flag, "--bogus"};
      TrainingArguments::from_argv(5, argv);
    });
    CHECK(status == 0);
    CHECK(out == TrainingArguments::help_text("my_train"));
  }
}

TEST_CASE("help_text has a usage line and one aligned line per field with type, default and description",
          "[args]") {
  const std::string help = TrainingArguments::help_text("prog");
  CHECK(help.rfind("usage: prog [--help] [--NAME VALUE | --NAME=VALUE]...\n", 0) == 0);
  const json fields = TrainingArguments().to_json();
  std::vector<std::string> lines;
  for (size_t begin = 0, end; (end = help.find('\n', begin)) != std::string::npos; begin = end + 1)
    lines.push_back(help.substr(begin, end - begin));
  // Columns (type, default, description) start at the same place on every field's line.
  const auto next_column = [](const std::string& line, size_t from) {
    return line.find_first_not_of(' ', line.find("  ", from));
  };
  std::vector<size_t> columns;
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    INFO(it.key());
    const std::string prefix = "  --" + it.key() + " ";
    const auto line =
        std::find_if(lines.begin(), lines.end(), [&](const auto& l) { return l.rfind(prefix, 0) == 0; });
    REQUIRE(line != lines.end());
    const size_t type = next_column(*line, 2), value = next_column(*line, type),
                 description = next_column(*line, value);
    if (columns.empty()) columns = {type, value, description};
    CHECK(std::vector<size_t>{type, value, description} == columns);
    CHECK(description != std::string::npos);
  }
  CHECK(std::count_if(lines.begin(), lines.end(), [](const auto& l) { return l.rfind("  --", 0) == 0; }) ==
        static_cast<long>(fields.size()));
  const std::regex learning_rate("  --learning_rate +float +5e-05 +initial learning rate");
  const std::regex eval_strategy("  --eval_strategy +\\{no,steps,epoch\\} +no +when to evaluate");
  const std::regex save_total_limit("  --save_total_limit +int\\|none +None +keep at most N checkpoints.*");
  const std::regex report_to("  --report_to +list\\[str\\] +none +trackers, comma-separated.*");
  const std::regex logging_steps("  --logging_steps +float +500 +log every N steps.*");
  for (const auto* re : {&learning_rate, &eval_strategy, &save_total_limit, &report_to, &logging_steps})
    CHECK(std::any_of(lines.begin(), lines.end(), [&](const auto& l) { return std::regex_match(l, *re); }));
  CHECK(std::find(lines.begin(), lines.end(), "Evaluation:") != lines.end());
}

TEST_CASE("to_json_string is HF's layout with sorted keys, whole step counts are ints, ratios floats",
          "[args]") {
  TrainingArguments args;
  args.output_dir = "out";
  args.logging_dir = "out/logs";
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 0.5;
  args.report_to = {"tensorboard", "csv"};
  args.validate();
  const std::string text = args.to_json_string();
  CHECK(text.rfind("{\n  \"adam_beta1\": 0.9,\n  \"adam_beta2\": 0.999,\n  \"adam_epsilon\": 1e-08,\n", 0) ==
        0);
  CHECK(text.find("\n  \"eval_steps\": 0.5,\n  \"eval_strategy\": \"steps\",\n") != std::string::npos);
  CHECK(text.find("\n  \"logging_dir\": \"out/logs\",\n") != std::string::npos);
  CHECK(text.find("\n  \"logging_steps\": 500,\n") != std::string::npos);
  CHECK(text.find("\n  \"report_to\": [\n    \"tensorboard\",\n    \"csv\"\n  ],\n") != std::string::npos);
  CHECK(text.find("\n  \"resume_from_checkpoint\": null,\n") != std::string::npos);
  const std::string last = "\n  \"weight_decay\": 0.0\n}";  // no trailing newline, as HF's to_json_string
  CHECK(text.compare(text.size() - last.size(), last.size(), last) == 0);
}

TEST_CASE("to_json / from_json / load_from_json round-trip every field", "[args]") {
  // clang-format off
  const auto args = parse({"--output_dir", "o", "--eval_strategy", "steps", "--eval_steps", "0.2",
                           "--save_steps", "0.4", "--load_best_model_at_end", "--metric_for_best_model", "accuracy",
                           "--report_to", "csv", "--lr_scheduler_kwargs", R"({"power": 2})",
                           "--learning_rate", "0.1", "--save_total_limit", "2", "--resume_from_checkpoint", "last",
                           "--data_seed", "3", "--max_grad_norm", "0", "--bf16", "--logging_steps", "0.1",
                           "--run_name", "r"});
  // clang-format on
  const json j = args.to_json();
  CHECK(TrainingArguments::from_json(j).to_json() == j);

  TempDir dir;
  write_file(dir / "training_args.json", args.to_json_string());
  CHECK(TrainingArguments::load_from_json(dir / "training_args.json").to_json() == j);

  // Missing keys keep their defaults; null unsets an optional.
  const auto partial =
      TrainingArguments::from_json(json::parse(R"({"max_steps": 9, "save_total_limit": null})"));
  CHECK(partial.max_steps == 9);
  CHECK(partial.per_device_train_batch_size == 8);
  CHECK_FALSE(partial.save_total_limit.has_value());
}

TEST_CASE("from_json and load_from_json name the key, the value and the file", "[args]") {
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"lerning_rate": 1})")); }) ==
        "unknown argument \"lerning_rate\" (did you mean learning_rate?)");
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"max_steps": "abc"})")); }) ==
        "field \"max_steps\" expects an integer (got \"abc\")");
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"max_steps": 2.5})")); }) ==
        "field \"max_steps\" expects an integer (got 2.5)");
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"report_to": [1]})")); }) ==
        "field \"report_to\" expects a list of strings (got [1])");
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"save_strategy": "sometimes"})")); }) ==
        "field \"save_strategy\" expects one of \"no\", \"steps\", \"epoch\", \"best\" (got \"sometimes\")");
  CHECK(error_of([] { TrainingArguments::from_json(json::parse(R"({"fp16": "yes"})")); }) ==
        "field \"fp16\" expects true or false (got \"yes\")");
  CHECK(error_of([] { TrainingArguments::from_json(json::array()); }) ==
        "arguments must be a JSON object (got array)");

  TempDir dir;
  const auto path = dir / "training_args.json";
  write_file(path, R"({"warmup_ratio": 2})");
  CHECK(error_of([&] { TrainingArguments::load_from_json(path); }) ==
        path.string() + ": --warmup_ratio must be in [0, 1] (got 2)");
  write_file(path, R"({"optimizer": "sgd"})");
  CHECK(error_of([&] { TrainingArguments::load_from_json(path); }) ==
        path.string() + ": unknown argument \"optimizer\"");
  write_file(path, "{");
  CHECK_THROWS_WITH(TrainingArguments::load_from_json(path), Catch::Contains(path.string()));
  CHECK_THROWS_AS(TrainingArguments::load_from_json(dir / "missing.json"), FormatError);
}

TEST_CASE("strategy names convert both ways, an unknown name lists the valid ones", "[args]") {
  for (auto s : {IntervalStrategy::no, IntervalStrategy::steps, IntervalStrategy::epoch})
    CHECK(interval_strategy_from_string(to_string(s)) == s);
  for (auto s : {SaveStrategy::no, SaveStrategy::steps, SaveStrategy::epoch, SaveStrategy::best})
    CHECK(save_strategy_from_string(to_string(s)) == s);
  CHECK(to_string(IntervalStrategy::epoch) == "epoch");
  CHECK(to_string(SaveStrategy::best) == "best");
  CHECK(error_of([] { interval_strategy_from_string("Steps"); }) ==
        "IntervalStrategy expects one of \"no\", \"steps\", \"epoch\" (got \"Steps\")");
  CHECK(error_of([] { save_strategy_from_string("always", "--save_strategy"); }) ==
        "--save_strategy expects one of \"no\", \"steps\", \"epoch\", \"best\" (got \"always\")");
}

TEST_CASE("include_num_input_tokens_seen takes HF's names or a bool, on the command line and in JSON",
          "[args]") {
  CHECK(parse({}).include_num_input_tokens_seen == TokenCounting::no);
  CHECK(parse({"--include_num_input_tokens_seen", "true"}).include_num_input_tokens_seen ==
        TokenCounting::all);
  CHECK(parse({"--include_num_input_tokens_seen", "False"}).include_num_input_tokens_seen ==
        TokenCounting::no);
  CHECK(parse({"--include_num_input_tokens_seen", "non_padding"}).include_num_input_tokens_seen ==
        TokenCounting::non_padding);
  CHECK(parse_error({"--include_num_input_tokens_seen", "some"}) ==
        "--include_num_input_tokens_seen expects one of \"no\", \"all\", \"non_padding\" (got \"some\")");
  CHECK(TrainingArguments::from_json(json::parse(R"({"include_num_input_tokens_seen": true})"))
            .include_num_input_tokens_seen == TokenCounting::all);
  CHECK(error_of(
            [] { TrainingArguments::from_json(json::parse(R"({"include_num_input_tokens_seen": 3})")); }) ==
        "field \"include_num_input_tokens_seen\" expects one of \"no\", \"all\", \"non_padding\" or a bool "
        "(got 3)");
  // Written as HF writes it after __post_init__: the name, never the bool.
  auto args = parse({"--include_num_input_tokens_seen", "yes"});
  CHECK(args.to_json().at("include_num_input_tokens_seen") == "all");
}

// ---- a program's own arguments (ArgumentParser) ----

namespace {
enum class Pooling { mean, max };
}  // namespace

namespace torchfit::detail {
template <>
struct EnumNames<Pooling> {
  static constexpr std::array<const char*, 2> values = {"mean", "max"};
};
}  // namespace torchfit::detail

namespace {

struct ModelArguments {
  std::string data_file = "data.csv";
  int patience = 10;
  float dropout = 0.1f;
  std::optional<int64_t> hidden_size;
  bool use_bias = true;
  Pooling pooling = Pooling::mean;

  static ArgumentFields<ModelArguments> fields() {
    return ArgumentFields<ModelArguments>("Model")
        .add("data_file", &ModelArguments::data_file, "training data")
        .add("patience", &ModelArguments::patience, "evaluations without improvement before stopping")
        .add("dropout", &ModelArguments::dropout, "dropout probability")
        .add("hidden_size", &ModelArguments::hidden_size, "hidden units; None: chosen from the data")
        .add("use_bias", &ModelArguments::use_bias, "linear layers with a bias")
        .section("Pooling")
        .add("pooling", &ModelArguments::pooling, "how token vectors are pooled");
  }
};

// A struct with its own checks: parsing reports them.
struct CheckedArguments {
  int layers = 2;
  static ArgumentFields<CheckedArguments> fields() {
    return ArgumentFields<CheckedArguments>().add("layers", &CheckedArguments::layers, "transformer layers");
  }
  void validate() {
    if (layers < 1) throw ArgumentError(fmt::format("--layers must be >= 1 (got {})", layers));
  }
};

using Parser = ArgumentParser<ModelArguments, TrainingArguments>;

Parser::Values parse_both(const Parser& parser, const std::vector<std::string>& tokens) {
  const auto argv = make_argv(tokens);
  return parser.parse(static_cast<int>(argv.size()), argv.data());
}

}  // namespace

TEST_CASE("ArgumentParser parses a program's struct and TrainingArguments together", "[args][parser]") {
  TrainingArguments defaults;  // defaults given in code
  defaults.output_dir = "code_default";
  defaults.learning_rate = 1e-3;
  defaults.eval_strategy = IntervalStrategy::epoch;
  const Parser parser(ModelArguments{}, defaults);

  const auto [model, args] =
      parse_both(parser, {"--patience", "3", "--learning_rate", "2e-3", "--no_use_bias", "--hidden_size=64",
                          "--pooling", "max", "--dropout", "0.25"});
  CHECK(model.patience == 3);
  CHECK(model.data_file == "data.csv");
  CHECK(model.hidden_size == 64);
  CHECK_FALSE(model.use_bias);
  CHECK(model.pooling == Pooling::max);
  CHECK(model.dropout == 0.25f);
  CHECK(args.learning_rate == 2e-3);         // the command line overrides the code's default
  CHECK(args.output_dir == "code_default");  // the code's default where no flag is given
  CHECK(args.eval_strategy == IntervalStrategy::epoch);
  CHECK(args.per_device_train_batch_size == 8);  // HF's default otherwise

  // Unknown flags are errors, with a suggestion from either struct.
  CHECK(error_of([&] {
          parse_both(parser, {"--patiense", "3"});
        }) == "unknown flag --patiense (did you mean --patience?); see --help");
  CHECK(error_of([&] {
          parse_both(parser, {"--lerning_rate", "3"});
        }) == "unknown flag --lerning_rate (did you mean --learning_rate?); see --help");
  CHECK(error_of([&] {
          parse_both(parser, {"--patience", "99999999999"});
        }) == "--patience expects an integer in [-2147483648, 2147483647] (got \"99999999999\")");
  CHECK(error_of([&] {
          parse_both(parser, {"--pooling", "sum"});
        }) == "--pooling expects one of \"mean\", \"max\" (got \"sum\")");
  // TrainingArguments is checked at parse time...
  CHECK(error_of([&] {
          parse_both(parser, {"--warmup_ratio", "2"});
        }) == "--warmup_ratio must be in [0, 1] (got 2)");
  // ... and so is any struct with a validate().
  const ArgumentParser<CheckedArguments> checked;
  const auto layers_zero = make_argv({"--layers", "0"});
  CHECK(error_of([&] { checked.parse(static_cast<int>(layers_zero.size()), layers_zero.data()); }) ==
        "--layers must be >= 1 (got 0)");

  // parse_known_args leaves what neither struct declares.
  const auto mixed = make_argv({"--patience", "4", "--extra", "x", "--max_steps", "7"});
  std::vector<std::string> rest;
  const auto [known_model, known_args] =
      parser.parse_known_args(static_cast<int>(mixed.size()), mixed.data(), rest);
  CHECK(known_model.patience == 4);
  CHECK(known_args.max_steps == 7);
  CHECK(rest == std::vector<std::string>{"--extra", "x"});
}

TEST_CASE("ArgumentParser's --help lists every struct's fields with the code's defaults", "[args][parser]") {
  TrainingArguments defaults;
  defaults.learning_rate = 1e-3;
  ModelArguments model_defaults;
  model_defaults.patience = 5;
  const Parser parser(model_defaults, defaults);
  const std::string help = parser.help_text("prog");
  CHECK(help.find("\nModel:\n  --data_file ") != std::string::npos);
  CHECK(help.find("\nPooling:\n  --pooling ") != std::string::npos);
  CHECK(help.find("\nOptimizer:\n") != std::string::npos);
  CHECK(help.find("\nModel:\n") < help.find("\nOutput:\n"));  // in the order of the template arguments
  const std::regex patience("\\n  --patience +int +5 +evaluations without improvement before stopping\\n");
  const std::regex learning_rate("\\n  --learning_rate +float +0\\.001 +initial learning rate\\n");
  const std::regex hidden_size(
      "\\n  --hidden_size +int\\|none +None +hidden units; None: chosen from the data\\n");
  const std::regex pooling("\\n  --pooling +\\{mean,max\\} +mean +how token vectors are pooled\\n");
  for (const auto* re : {&patience, &learning_rate, &hidden_size, &pooling})
    CHECK(std::regex_search(help, *re));

  const auto [status, out] = exit_status_and_stdout([&] {
    const char* argv[] = {"/bin/prog", "--patience", "1", "--help"};
    parser.parse(4, argv);
  });
  CHECK(status == 0);
  CHECK(out == help);

  CHECK(error_of([] { ArgumentParser<ModelArguments, ModelArguments>(); }) ==
        "--data_file is declared twice (in \"Model\" and in \"Model\"); rename one");
}

TEST_CASE("ArgumentParser reads one JSON object into both structs", "[args][parser]") {
  const Parser parser;
  const auto [model, args] = parser.from_json(
      json::parse(R"({"patience": 2, "pooling": "max", "max_steps": 9, "hidden_size": null})"));
  CHECK(model.patience == 2);
  CHECK(model.pooling == Pooling::max);
  CHECK_FALSE(model.hidden_size.has_value());
  CHECK(args.max_steps == 9);
  CHECK(error_of([&] { parser.from_json(json::parse(R"({"patient": 2})")); }) ==
        "unknown argument \"patient\" (did you mean patience?)");
  CHECK(error_of([&] { parser.from_json(json::parse(R"({"patience": "many"})")); }) ==
        "field \"patience\" expects an integer (got \"many\")");

  TempDir dir;
  json saved = ModelArguments::fields().to_json(model);
  saved.update(args.to_json());
  write_file(dir / "args.json", saved.dump());
  const auto [model2, args2] = parser.load_from_json(dir / "args.json");
  CHECK(ModelArguments::fields().to_json(model2) == ModelArguments::fields().to_json(model));
  CHECK(args2.to_json() == args.to_json());
  write_file(dir / "args.json", R"({"dropout": "high"})");
  CHECK(error_of([&] { parser.load_from_json(dir / "args.json"); }) ==
        (dir / "args.json").string() + ": field \"dropout\" expects a number (got \"high\")");
}

TEST_CASE("derived fields are computed when validated, so fields changed after parsing are honoured",
          "[args]") {
  auto args = parse({"--output_dir", "first", "--eval_strategy", "steps", "--logging_steps", "50"});
  CHECK(args.logging_dir.empty());
  CHECK_FALSE(args.eval_steps.has_value());
  args.output_dir = "second";  // changed in code after parsing, as a program may
  args.logging_steps = 20;
  args.validate();  // what the Trainer's constructor does with its copy
  CHECK(args.logging_dir.rfind("second/runs/", 0) == 0);
  CHECK(args.eval_steps == 20.0);
}

TEST_CASE("a metric that looks like an error measure warns when greater_is_better is derived", "[args]") {
  const auto warnings_for = [](const std::string& metric, std::optional<bool> greater_is_better) {
    test::CaptureLog log;
    TrainingArguments args;
    args.metric_for_best_model = metric;
    args.greater_is_better = greater_is_better;
    args.validate();
    return log.text();
  };
  CHECK(
      warnings_for("eval_mse", std::nullopt) ==
      "[torchfit] warning: \"eval_mse\" looks like an error measure (lower is better), but it is treated as "
      "greater-is-better because its name does not end in \"loss\" (Hugging Face's rule): the best "
      "checkpoint and "
      "early stopping would favour its highest values. Set --greater_is_better false if lower is better, or "
      "true "
      "to keep this and silence the warning\n");
  CHECK(warnings_for("eval_mse", std::nullopt).empty());  // once per process
  for (const char* metric : {"val-RMSE", "word_error_rate", "wer", "ppl", "mae"})
    CHECK_THAT(warnings_for(metric, std::nullopt), Catch::Contains("looks like an error measure"));
  for (const char* metric : {"accuracy", "f1_macro", "eval_loss", "mse2", "bleu", "rmse_loss"})
    CHECK(warnings_for(metric, std::nullopt).empty());
  CHECK(warnings_for("test_mse", false).empty());  // given: nothing to warn about
  CHECK(warnings_for("train_mae", true).empty());

  CHECK_THAT(TrainingArguments::help_text("prog"),
             Catch::Contains(
                 "None: false if --metric_for_best_model ends in \"loss\", else true (HF's rule: give it "
                 "for error measures such as mse)"));
}
