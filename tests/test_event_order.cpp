// SPDX-License-Identifier: MIT
// A property test of the event order: random configurations run through the Trainer, checked against an
// expectation written independently from HF v4.57's rules (hf_semantics.md §3.3, §8.1, §8.3, errata) plus
// torchfit's documented final-step rule.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "support.hpp"
#include "torchfit/torchfit.hpp"

using namespace torchfit;

namespace {

// One random configuration, as a command line would give it (so *_steps values are floats, as HF's parser reads
// them, unless left at their default).
struct Config {
  int64_t n_train = 0, n_eval = 0, batch_size = 0, eval_batch_size = 0, ga = 1;
  bool drop_last = false;
  int64_t max_steps = -1;
  double epochs = 1;
  IntervalStrategy logging = IntervalStrategy::steps, eval = IntervalStrategy::no;
  SaveStrategy save = SaveStrategy::no;
  std::optional<double> logging_steps, eval_steps, save_steps;  // nullopt: HF's default
  double eval_delay = 0;
  bool logging_first_step = false, eval_on_start = false;

  std::string describe() const {
    const auto opt = [](const std::optional<double>& v) {
      return v ? fmt::format("{}", *v) : std::string("default");
    };
    return fmt::format(
        "n_train={} n_eval={} bs={} eval_bs={} ga={} drop_last={} max_steps={} epochs={} logging={}/{} "
        "first_step={} eval={}/{} delay={} on_start={} save={}/{}",
        n_train, n_eval, batch_size, eval_batch_size, ga, drop_last, max_steps, epochs, to_string(logging),
        opt(logging_steps), logging_first_step, to_string(eval), opt(eval_steps), eval_delay, eval_on_start,
        to_string(save), opt(save_steps));
  }
};

Config random_config(std::mt19937& rng) {
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  const auto any_of = [&](std::initializer_list<double> values) {
    return *(values.begin() + pick(0, static_cast<int>(values.size()) - 1));
  };
  const auto strategy = [&] { return static_cast<IntervalStrategy>(pick(0, 2)); };
  // A whole count, a ratio of max_steps, or (when the strategy is not "steps") a fraction HF keeps as is.
  const auto interval = [&](bool steps_strategy) -> std::optional<double> {
    switch (pick(0, 5)) {
      case 0:
        return std::nullopt;
      case 1:
        return any_of({0.07, 0.1, 0.25, 0.3, 0.5});
      case 2:
        return steps_strategy ? 1.0 : 2.5;
      default:
        return static_cast<double>(pick(1, 6));
    }
  };
  Config c;
  c.n_train = pick(1, 23);
  c.batch_size = pick(1, 4);
  c.drop_last = c.n_train >= c.batch_size && chance(0.25);
  c.ga = pick(1, 4);
  c.n_eval = pick(1, 5);
  c.eval_batch_size = pick(1, 3);
  if (chance(0.4))
    c.max_steps = pick(1, 14);
  else
    c.epochs = any_of({0.3, 0.5, 1, 1.1, 1.5, 2, 2.5, 3});
  c.logging = strategy();
  c.logging_steps = interval(c.logging == IntervalStrategy::steps);
  if (c.logging == IntervalStrategy::steps && !c.logging_steps)
    c.logging_steps = pick(1, 4);  // 500 logs nothing
  c.logging_first_step = chance(0.3);
  c.eval = strategy();
  c.eval_steps = interval(c.eval == IntervalStrategy::steps);
  if (c.eval != IntervalStrategy::no && chance(0.3))
    c.eval_delay = c.eval == IntervalStrategy::epoch ? any_of({0.5, 1, 1.5}) : pick(1, 6);
  c.eval_on_start = chance(0.2);
  c.save = static_cast<SaveStrategy>(pick(0, 2));
  c.save_steps = interval(c.save == SaveStrategy::steps);
  return c;
}

TrainingArguments arguments_of(const Config& c, const std::filesystem::path& output_dir) {
  TrainingArguments args;
  args.output_dir = output_dir.string();
  args.per_device_train_batch_size = c.batch_size;
  args.per_device_eval_batch_size = c.eval_batch_size;
  args.gradient_accumulation_steps = c.ga;
  args.dataloader_drop_last = c.drop_last;
  args.max_steps = c.max_steps;
  args.num_train_epochs = c.epochs;
  args.logging_strategy = c.logging;
  if (c.logging_steps) args.logging_steps = *c.logging_steps;
  args.logging_first_step = c.logging_first_step;
  args.eval_strategy = c.eval;
  args.eval_steps = c.eval_steps;
  args.eval_delay = c.eval_delay;
  args.eval_on_start = c.eval_on_start;
  args.save_strategy = c.save;
  if (c.save_steps) args.save_steps = *c.save_steps;
  args.disable_tqdm = true;
  return args;
}

// What HF v4.57 (plus torchfit's final-step rule) does with a configuration.
struct Expected {
  std::vector<std::string> events;
  std::vector<json> log_history;           // {"kind": loss|eval|summary, "step": ..., "epoch": ...}
  std::map<int64_t, json> saved_controls;  // TrainerControl args written into checkpoint-<step>
  int64_t max_steps = 0, num_train_epochs = 0;
  json logging_steps, eval_steps, save_steps;  // as trainer_state.json holds them
};

// HF's TrainingArguments.__post_init__ then TrainerState.compute_steps on one interval: a given value is a float
// (HF's parser), made an int when its strategy is "steps" and it is above 1; a ratio becomes ceil(max_steps * r).
json expected_interval(std::optional<double> given, bool steps_strategy, int64_t max_steps) {
  if (!given) return 500;
  if (*given < 1) return static_cast<int64_t>(std::ceil(static_cast<double>(max_steps) * *given));
  if (steps_strategy && *given > 1) return static_cast<int64_t>(*given);
  return *given;
}

Expected expect(const Config& c) {
  Expected x;
  const int64_t batches =
      c.drop_last ? c.n_train / c.batch_size : (c.n_train + c.batch_size - 1) / c.batch_size;
  const int64_t updates_per_epoch = std::max<int64_t>((batches + c.ga - 1) / c.ga, 1);
  if (c.max_steps > 0) {
    x.max_steps = c.max_steps;
    x.num_train_epochs = (c.max_steps + updates_per_epoch - 1) / updates_per_epoch;
  } else {
    x.max_steps = static_cast<int64_t>(std::ceil(c.epochs * static_cast<double>(updates_per_epoch)));
    x.num_train_epochs = static_cast<int64_t>(std::ceil(c.epochs));
  }
  // Without eval_steps, eval "steps" falls back to logging_steps (before the int conversion).
  const std::optional<double> eval_given =
      c.eval_steps ? c.eval_steps : (c.eval == IntervalStrategy::steps ? c.logging_steps : std::nullopt);
  x.logging_steps = expected_interval(c.logging_steps, c.logging == IntervalStrategy::steps, x.max_steps);
  x.eval_steps = expected_interval(eval_given, c.eval == IntervalStrategy::steps, x.max_steps);
  x.save_steps = expected_interval(c.save_steps, c.save == SaveStrategy::steps, x.max_steps);
  const double log_every = x.logging_steps.get<double>(), eval_every = x.eval_steps.get<double>(),
               save_every = x.save_steps.get<double>();

  bool log = false, evaluate = false, save = false, stop = false;
  int64_t gs = 0, last_logged = 0;
  json epoch = 0;
  const auto emit = [&](std::string e) { x.events.push_back(std::move(e)); };
  const auto entry = [&](const char* kind) {
    x.log_history.push_back({{"kind", kind}, {"step", gs}, {"epoch", epoch}});
  };
  const auto run_evaluation = [&] {
    for (int64_t b = 0; b < (c.n_eval + c.eval_batch_size - 1) / c.eval_batch_size; ++b)
      emit("on_prediction_step");
    emit("on_log(eval)");
    entry("eval");
    log = false;
    emit("on_evaluate");
    evaluate = false;
  };
  const auto maybe_log_save_evaluate = [&] {
    if (log && gs > last_logged) {
      emit("on_log(loss)");
      entry("loss");
      log = false;
      last_logged = gs;
    }
    if (evaluate) run_evaluation();
    if (save) {
      x.saved_controls[gs] = {{"should_epoch_stop", false},
                              {"should_evaluate", evaluate},
                              {"should_log", log},
                              {"should_save", true},
                              {"should_training_stop", stop}};
      emit("on_save(gs=" + std::to_string(gs) + ")");
      save = false;
    }
  };
  const auto divides = [](int64_t step, double every) {
    return std::fmod(static_cast<double>(step), every) == 0;
  };

  emit("on_train_begin");
  if (c.eval_on_start) run_evaluation();
  for (int64_t e = 0; e < x.num_train_epochs && !stop; ++e) {
    emit("on_epoch_begin");
    for (int64_t step = 0; step < batches; ++step) {
      if (step % c.ga == 0) {
        emit("on_step_begin");
        log = evaluate = save = false;
      }
      if ((step + 1) % c.ga != 0 && step + 1 != batches) {
        emit("on_substep_end");
        continue;
      }
      emit("on_pre_optimizer_step");
      emit("on_optimizer_step");
      ++gs;
      epoch = static_cast<double>(e) + static_cast<double>(step + 1) / static_cast<double>(batches);
      emit("on_step_end(gs=" + std::to_string(gs) + ")");
      // DefaultFlowCallback.on_step_end
      if (gs == 1 && c.logging_first_step) log = true;
      if (c.logging == IntervalStrategy::steps && divides(gs, log_every)) log = true;
      const bool eval_due = c.eval_delay <= static_cast<double>(gs);
      if (c.eval == IntervalStrategy::steps && divides(gs, eval_every) && eval_due) evaluate = true;
      if (c.save == SaveStrategy::steps && save_every > 0 && divides(gs, save_every)) save = true;
      if (gs >= x.max_steps) {
        stop = true;
        if (c.save == SaveStrategy::steps) save = true;
        // torchfit's final-step rule (HF v5 does the evaluation half)
        if (c.logging == IntervalStrategy::steps) log = true;
        if (c.eval == IntervalStrategy::steps && eval_due) evaluate = true;
      }
      maybe_log_save_evaluate();
      if (stop) break;
    }
    emit("on_epoch_end");
    // DefaultFlowCallback.on_epoch_end
    if (c.logging == IntervalStrategy::epoch) log = true;
    if (c.eval == IntervalStrategy::epoch && c.eval_delay <= epoch.get<double>()) evaluate = true;
    if (c.save == SaveStrategy::epoch) save = true;
    maybe_log_save_evaluate();
  }
  emit("on_log(summary)");
  entry("summary");
  emit("on_train_end");
  return x;
}

struct Run {
  std::vector<std::string> events;
  TrainerState state;
};

Run run(const Config& c, const std::filesystem::path& output_dir) {
  auto data = [](int64_t n, uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    return std::make_pair(torch::randn({n, 2}, gen), torch::randn({n, 1}, gen));
  };
  auto loss = [](torch::nn::Linear& model, const torch::data::Example<>& batch) {
    return torch::mse_loss(model->forward(batch.data), batch.target);
  };
  auto trace = std::make_shared<test::TraceCallback>();
  Trainer trainer(torch::nn::Linear(2, 1), arguments_of(c, output_dir), data(c.n_train, 1), data(c.n_eval, 2),
                  loss, {}, {trace});
  trainer.remove_callback<PrinterCallback>();
  trainer.train();
  Run out{trace->events, trainer.state()};
  // Callbacks given to the constructor receive on_init_end (HF's Trainer(callbacks=[...])).
  REQUIRE(!out.events.empty());
  CHECK(out.events.front() == "on_init_end");
  out.events.erase(out.events.begin());
  return out;
}

bool valid(const Config& c) {
  try {
    arguments_of(c, "unused").validate();
    return true;
  } catch (const ArgumentError&) {
    return false;
  }
}

std::string kind_of(const Logs& entry) {
  if (entry.contains("loss")) return "loss";
  if (entry.contains("train_runtime")) return "summary";
  return "eval";
}

}  // namespace

TEST_CASE("event order, logged steps and interval values match HF's rules over 250 random configurations",
          "[trainer][events][property]") {
  std::mt19937 rng(20261202);
  int checked = 0, with_saves = 0, with_eval_on_start = 0;
  for (int i = 0; i < 250; ++i) {
    Config c = random_config(rng);
    // HF refuses e.g. an eval_steps fallback of 2.5 under "steps" too: draw again.
    while (!valid(c)) c = random_config(rng);
    INFO("configuration " << i << ": " << c.describe());
    const Expected x = expect(c);
    test::TempDir dir;
    const Run got = run(c, dir.path());

    CHECK(got.events == x.events);
    CHECK(got.state.max_steps == x.max_steps);
    CHECK(got.state.num_train_epochs == x.num_train_epochs);
    const json state = got.state.to_json();
    CHECK(state.at("logging_steps").dump() == x.logging_steps.dump());
    CHECK(state.at("eval_steps").dump() == x.eval_steps.dump());
    CHECK(state.at("save_steps").dump() == x.save_steps.dump());
    REQUIRE(got.state.log_history.size() == x.log_history.size());
    for (std::size_t k = 0; k < x.log_history.size(); ++k) {
      const Logs& entry = got.state.log_history[k];
      INFO("log_history[" << k << "] = " << entry.dump());
      CHECK(kind_of(entry) == x.log_history[k].at("kind").get<std::string>());
      CHECK(entry.at("step") == x.log_history[k].at("step"));
      // Python's json writes the int 0 and floats differently: compare the written form.
      CHECK(torchfit::detail::python_json_dumps(entry.at("epoch"), -1) ==
            torchfit::detail::python_json_dumps(x.log_history[k].at("epoch"), -1));
    }
    for (const auto& [step, control] : x.saved_controls) {
      const auto file = checkpoint::dir_for(dir.path(), step) / checkpoint::state_file;
      INFO("checkpoint " << file);
      REQUIRE(std::filesystem::exists(file));
      CHECK(TrainerState::load_from_json(file).stateful_callbacks.at("TrainerControl").at("args") == control);
    }
    ++checked;
    with_saves += !x.saved_controls.empty();
    with_eval_on_start += c.eval_on_start;
  }
  CHECK(checked == 250);
  // The generator covers the interesting corners, not just easy runs.
  CHECK(with_saves > 50);
  CHECK(with_eval_on_start > 20);
}

TEST_CASE("runs that would train nothing are refused, naming the flag", "[trainer][errors]") {
  TrainingArguments args;
  args.max_steps = 0;
  CHECK_THROWS_AS(args.validate(), ArgumentError);
  CHECK_THROWS_WITH(args.validate(), Catch::Matchers::StartsWith("--max_steps 0 would train nothing"));
  args.max_steps = -1;
  args.num_train_epochs = 0;
  CHECK_THROWS_AS(args.validate(), ArgumentError);
  CHECK_THROWS_WITH(args.validate(), Catch::Matchers::StartsWith(
                                         "--num_train_epochs must be > 0 when --max_steps is not set"));
}
