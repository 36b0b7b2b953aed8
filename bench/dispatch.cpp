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

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include <torchfit/integrations/tensorboard.hpp>
#include <torchfit/torchfit.hpp>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
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

/// Accepts and drops every character: the stream still does all its formatting, as it would for a terminal.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return traits_type::not_eof(c); }
  std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

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

void print_row(const std::string& what, double ns) { std::cout << fmt::format("{:<64} {:>12.1f}\n", what, ns); }

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
  print_row("ProgressCallback (plain) on_log to a null stream", median_ns(runs, iterations, [&] {
              progress.on_log(args, state, control, ctx);
            }));
  torchfit::PrinterCallback printer(null_out);
  print_row("PrinterCallback on_log to a null stream", median_ns(runs, iterations, [&] {
              printer.on_log(args, state, control, ctx);
            }));
  torchfit::TensorBoardCallback tensorboard;
  tensorboard.on_train_begin(args, state, control, ctx);
  print_row("TensorBoardCallback on_log (4 scalars, written and flushed)", median_ns(runs, iterations, [&] {
              tensorboard.on_log(args, state, control, ctx);
            }));
  tensorboard.on_train_end(args, state, control, ctx);
}

}  // namespace

int main(int argc, char** argv) try {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick")
      quick = true;
    else
      throw std::invalid_argument(std::string("unknown argument \"") + argv[i] + "\"; usage: dispatch [--quick]");
  }
  const int runs = quick ? 3 : 7;
  const fs::path dir = fs::temp_directory_path() / fmt::format("torchfit_dispatch_{}", ::getpid());
  bench_dispatch(runs, quick ? 100000 : 10000000);
  bench_logging_step(runs, quick ? 200 : 20000, dir);
  fs::remove_all(dir);
  std::cout << "median of " << runs << " runs\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "dispatch: " << e.what() << '\n';
  return 2;
}
