// SPDX-License-Identifier: MIT
// Nanoseconds per event dispatched through torchfit::CallbackHandler, and the cost of one logging step's work
// (the budget: an event no callback overrides costs nothing measurable, each interested callback is one virtual
// call; logging work happens only on logging steps).
//
// Every figure is the median over several runs of a tight loop; compiler barriers keep the work from being
// hoisted or deleted.
//
//   ./dispatch [--quick]
#include <unistd.h>

#include <ext/stdio_filebuf.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include <torchfit/integrations/tensorboard.hpp>
#include <torchfit/torchfit.hpp>

#include "bench_support.hpp"

namespace {

namespace fs = std::filesystem;
using bench::Clock;
using bench::NullBuffer;
using torchfit::CallbackContext;
using torchfit::TrainerControl;
using torchfit::TrainerState;
using torchfit::TrainingArguments;

/// Makes `value` observable to the compiler, so computing it cannot be optimised away.
template <typename T>
inline void do_not_optimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}
/// Forces pending writes to memory and forbids caching memory across this point.
inline void clobber_memory() { asm volatile("" : : : "memory"); }

/// Overrides on_step_end only; a distinct type per index, since the handler warns about duplicate types.
template <int Index>
class StepCounter : public torchfit::TrainerCallback {
 public:
  void on_step_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override { ++calls; }
  int64_t calls = 0;
};

template <int... Index>
void add_step_counters(torchfit::CallbackHandler& handler, std::vector<torchfit::TrainerCallback*>& raw,
                       std::integer_sequence<int, Index...>) {
  (raw.push_back(handler.add_callback<StepCounter<Index>>().get()), ...);
}

/// Median nanoseconds per iteration of `body` over `runs` runs of `iterations` (after one unmeasured run).
template <typename F>
double median_ns(int runs, int64_t iterations, F&& body) {
  std::vector<double> ns;
  for (int r = 0; r <= runs; ++r) {
    const auto start = Clock::now();
    for (int64_t i = 0; i < iterations; ++i) {
      body();
      clobber_memory();
    }
    const double elapsed = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    if (r > 0) ns.push_back(elapsed / static_cast<double>(iterations));
  }
  std::sort(ns.begin(), ns.end());
  return ns[ns.size() / 2];
}

void print_row(const std::string& what, double ns) {
  std::cout << fmt::format("{:<64} {:>12.1f}\n", what, ns);
}

/// The entry a training logging step produces (what Trainer::log receives: loss, grad_norm, learning_rate).
torchfit::Logs training_logs(int64_t i) {
  torchfit::Logs logs = torchfit::Logs::object();
  logs["loss"] = 2.3025 - 1e-6 * static_cast<double>(i);
  logs["grad_norm"] = 0.8734;
  logs["learning_rate"] = 1e-3;
  return logs;
}

void bench_dispatch(int runs, int64_t iterations) {
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  std::cout << fmt::format("{:<64} {:>12}\n", "event dispatch", "ns/event");
  for (const int count : {0, 1, 10}) {
    torchfit::CallbackHandler handler;
    std::vector<torchfit::TrainerCallback*> raw;
    if (count == 1) add_step_counters(handler, raw, std::make_integer_sequence<int, 1>());
    if (count == 10) add_step_counters(handler, raw, std::make_integer_sequence<int, 10>());
    const std::string callbacks = fmt::format("{} callback{}", count, count == 1 ? "" : "s");
    print_row(fmt::format("on_step_end, {}, each overriding it", callbacks),
              median_ns(runs, iterations, [&] { handler.on_step_end(args, state, control); }));
    print_row(fmt::format("on_substep_end, {}, none overriding it", callbacks),
              median_ns(runs, iterations, [&] { handler.on_substep_end(args, state, control); }));
    // The floor: the same virtual calls made directly, without the handler.
    const CallbackContext ctx;
    print_row(fmt::format("  reference: on_step_end called directly on the {}", callbacks),
              median_ns(runs, iterations, [&] {
                for (auto* cb : raw) cb->on_step_end(args, state, control, ctx);
              }));
  }
}

/// A pipe drained by a thread, as when a program's stderr is piped to another process.
struct Pipe {
  static std::array<int, 2> make() {
    std::array<int, 2> fds{};
    if (::pipe(fds.data()) != 0) throw std::runtime_error("cannot create a pipe");
    return fds;
  }
  Pipe() = default;
  ~Pipe() {
    out.flush();
    buffer.close();  // closes the write end: the reader sees the end of the pipe
    reader.join();
    ::close(fds[0]);
  }
  std::array<int, 2> fds = make();
  __gnu_cxx::stdio_filebuf<char> buffer{fds[1], std::ios::out};
  std::ostream out{&buffer};
  std::thread reader{[fd = fds[0]] {
    char chunk[1 << 16];
    while (::read(fd, chunk, sizeof chunk) > 0) {
    }
  }};
};

/// Times the training thread spends between on_step_end and the next on_step_begin, where the Trainer logs,
/// evaluates and saves: on logging steps and on the others.
struct GapTimer : torchfit::TrainerCallback {
  void on_step_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    logging = state.global_step % 2 == 0;  // logging_steps 2
    ended = Clock::now();
  }
  void on_step_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    if (!ended) return;
    const double gap = std::chrono::duration<double, std::micro>(Clock::now() - *ended).count();
    (logging ? logging_gaps : other_gaps).push_back(gap);
  }
  std::optional<Clock::time_point> ended;
  bool logging = false;
  std::vector<double> logging_gaps, other_gaps;
};

/// Microseconds a logging step costs the training thread in the Trainer: the median time from on_step_end to
/// the next on_step_begin on logging steps minus that on the other steps, logging every other step (Linear 4-1,
/// batch 1, so that steps are short); with no reporting callback, with TensorBoard, with ProgressCallback in
/// plain mode writing to a pipe, and with both. Median over the runs.
void bench_trainer_logging(int runs, int64_t steps, const fs::path& dir) {
  const auto data = std::make_pair(torch::randn({steps, 4}), torch::randn({steps, 1}));
  Pipe pipe;
  const auto run = [&](bool tensorboard, bool progress) {
    TrainingArguments args;
    args.output_dir = (dir / "trainer").string();
    args.logging_dir = (dir / "trainer_runs").string();
    args.report_to = {tensorboard ? "tensorboard" : "none"};
    args.per_device_train_batch_size = 1;
    args.max_steps = steps;
    args.logging_steps = 2;
    args.save_strategy = torchfit::SaveStrategy::no;
    args.use_cpu = true;
    torch::nn::Linear model(4, 1);
    torchfit::Trainer trainer(model, args, data, [](torch::nn::Linear& m, const torch::data::Example<>& b) {
      return torch::mse_loss(m->forward(b.data), b.target);
    });
    trainer.remove_callback<torchfit::ProgressCallback>();
    if (progress)
      trainer.callback_handler().add_tail_callback(
          std::make_shared<torchfit::ProgressCallback>(pipe.out, torchfit::ProgressMode::plain));
    const auto gaps = trainer.add_callback<GapTimer>();
    trainer.train();
    return std::make_pair(bench::median(gaps->logging_gaps), bench::median(gaps->other_gaps));
  };
  struct Config {
    const char* name;
    bool tensorboard, progress;
  };
  const std::vector<Config> configs = {{"no reporting callback", false, false},
                                       {"TensorBoard", true, false},
                                       {"ProgressCallback (plain) to a pipe", false, true},
                                       {"TensorBoard and ProgressCallback (plain) to a pipe", true, true}};
  std::vector<std::vector<double>> logging(configs.size()), other(configs.size());
  for (int r = 0; r <= runs; ++r)
    for (std::size_t c = 0; c < configs.size(); ++c) {
      const auto [log_gap, other_gap] = run(configs[c].tensorboard, configs[c].progress);
      if (r == 0) continue;  // warm-up
      logging[c].push_back(log_gap - other_gap);
      other[c].push_back(other_gap);
    }
  std::cout << fmt::format("\n{:<64} {:>12}\n",
                           "a logging step on the Trainer's thread (Linear 4-1, batch 1)", "us/step");
  for (std::size_t c = 0; c < configs.size(); ++c) print_row(configs[c].name, bench::median(logging[c]));
  print_row("  reference: a step that does not log, on_step_end to on_step_begin",
            bench::median(other.back()));
}

void bench_logging_step(int runs, int64_t iterations, const fs::path& dir) {
  TrainingArguments args;
  args.output_dir = (dir / "output").string();
  args.logging_dir = (dir / "runs").string();
  TrainerState state;
  state.max_steps = 1000000;
  state.logging_steps = 50;
  state.epoch = 1.5;
  TrainerControl control;
  CallbackContext ctx;
  NullBuffer null_buffer;
  std::ostream null_out(&null_buffer);

  std::cout << fmt::format("\n{:<64} {:>12}\n", "one logging step's work", "ns/step");

  // What the Trainer does on a logging step before any callback runs: two host reads (loss sum, grad norm),
  // the entry with its epoch, and the copy with "step" appended to the log history.
  const auto loss_sum = torch::full({}, 115.0);
  const auto grad_norm = torch::full({}, 0.87);
  print_row("read loss sum and grad norm from 0-d CPU tensors (.item)", median_ns(runs, iterations, [&] {
              do_not_optimize(loss_sum.item<double>());
              do_not_optimize(grad_norm.item<double>());
            }));
  int64_t step = 0;
  print_row("build the log entry and append it to log_history", median_ns(runs, iterations, [&] {
              torchfit::Logs logs = training_logs(++step);
              logs["epoch"] = *state.epoch;
              torchfit::Logs entry = logs;
              entry["step"] = step;
              state.log_history.push_back(std::move(entry));
              do_not_optimize(state.log_history.back());
              if (state.log_history.size() > 1000) state.log_history.clear();
            }));
  state.log_history.clear();

  const torchfit::Logs logs = [&] {
    torchfit::Logs l = training_logs(1);
    l["epoch"] = *state.epoch;
    return l;
  }();
  ctx.logs = &logs;
  torchfit::ProgressCallback progress(null_out, torchfit::ProgressMode::plain);
  progress.on_train_begin(args, state, control, ctx);
  print_row("ProgressCallback (plain) on_log to a null stream",
            median_ns(runs, iterations, [&] { progress.on_log(args, state, control, ctx); }));
  torchfit::PrinterCallback printer(null_out);
  print_row("PrinterCallback on_log to a null stream",
            median_ns(runs, iterations, [&] { printer.on_log(args, state, control, ctx); }));
  torchfit::TensorBoardCallback tensorboard;
  tensorboard.on_train_begin(args, state, control, ctx);
  print_row("TensorBoardCallback on_log (4 scalars, written and flushed)",
            median_ns(runs, iterations, [&] { tensorboard.on_log(args, state, control, ctx); }));
  tensorboard.on_train_end(args, state, control, ctx);

  Pipe pipe;
  torchfit::ProgressCallback piped(pipe.out, torchfit::ProgressMode::plain);
  piped.on_train_begin(args, state, control, ctx);
  print_row("ProgressCallback (plain) on_log to a pipe",
            median_ns(runs, iterations, [&] { piped.on_log(args, state, control, ctx); }));
}

}  // namespace

int main(int argc, char** argv) try {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick")
      quick = true;
    else
      throw std::invalid_argument(std::string("unknown argument \"") + argv[i] +
                                  "\"; usage: dispatch [--quick]");
  }
  const int runs = quick ? 3 : 7;
  const fs::path dir = fs::temp_directory_path() / fmt::format("torchfit_dispatch_{}", ::getpid());
  bench_dispatch(runs, quick ? 100000 : 10000000);
  bench_logging_step(runs, quick ? 200 : 20000, dir);
  torchfit::log::set_level(torchfit::log::Level::warning);
  bench_trainer_logging(runs, quick ? 50 : 2000, dir);
  fs::remove_all(dir);
  std::cout << "median of " << runs << " runs\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "dispatch: " << e.what() << '\n';
  return 2;
}
