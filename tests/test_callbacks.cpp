// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/torchfit.hpp"

using namespace torchfit;

namespace {

// Drives callbacks through a handler as a training run would.
struct Run {
  CallbackHandler handler;
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  LoaderInfo eval_loader{2, 4, 2};

  Run() {
    state.max_steps = 4;
    handler.context().eval_dataloader = &eval_loader;
  }
  void begin() { handler.on_train_begin(args, state, control); }
  void step() {
    ++state.global_step;
    handler.on_step_end(args, state, control);
  }
  void log(const Logs& logs) { handler.on_log(args, state, control, logs); }
  void evaluate(const Logs& metrics) {
    handler.on_prediction_step(args, state, control);
    handler.on_prediction_step(args, state, control);
    handler.on_log(args, state, control, metrics);
    handler.on_evaluate(args, state, control, metrics);
  }
  void epoch_end() { handler.on_epoch_end(args, state, control); }
  void end() { handler.on_train_end(args, state, control); }
};

// Reads what a pseudo-terminal's master side received so far.
std::string drain(int master) {
  std::string out;
  char buffer[4096];
  pollfd p{master, POLLIN, 0};
  while (::poll(&p, 1, 50) > 0) {
    const auto n = ::read(master, buffer, sizeof buffer);
    if (n <= 0) break;
    out.append(buffer, static_cast<std::size_t>(n));
  }
  return out;
}

// A stream writing straight to a file descriptor.
class FdStream : public std::ostream {
 public:
  explicit FdStream(int fd) : std::ostream(&buf_), buf_(fd) {}

 private:
  struct Buf : std::streambuf {
    explicit Buf(int f) : fd(f) {}
    int_type overflow(int_type c) override {
      if (c == traits_type::eof()) return 0;
      const char ch = static_cast<char>(c);
      return ::write(fd, &ch, 1) == 1 ? c : traits_type::eof();
    }
    std::streamsize xsputn(const char* s, std::streamsize n) override {
      return ::write(fd, s, static_cast<std::size_t>(n));
    }
    int fd;
  } buf_;
};

}  // namespace

TEST_CASE("Printer prints each log as a Python dict, without total_flos", "[callbacks][printer]") {
  std::ostringstream out;
  Run run;
  run.handler.add_callback<PrinterCallback>(out);
  run.log(Logs{{"loss", 0.5824}, {"grad_norm", 5.25}, {"learning_rate", 0.0005}, {"epoch", 19.5}});
  run.log(Logs{{"train_runtime", 1.5}, {"total_flos", 0.0}, {"train_loss", 0.1}, {"note", "it's"}});
  run.state.is_local_process_zero = false;
  run.log(Logs{{"loss", 1.0}});
  CHECK(out.str() ==
        "{'loss': 0.5824, 'grad_norm': 5.25, 'learning_rate': 0.0005, 'epoch': 19.5}\n"
        "{'train_runtime': 1.5, 'train_loss': 0.1, 'note': \"it's\"}\n");
}

TEST_CASE("Progress in plain mode prints rate-limited lines and logs, never a carriage return", "[callbacks][progress]") {
  std::ostringstream out;
  double t = 100.0;
  Run run;
  auto progress = std::make_shared<ProgressCallback>(out, ProgressMode::plain);
  progress->set_clock([&] { return t; });
  progress->set_plain_interval(10);
  run.handler.add_callback(progress);
  run.begin();
  t += 4;
  run.step();  // 4 s since start: no line
  run.log(Logs{{"loss", 0.123456}, {"epoch", 0.254999}, {"total_flos", 1.0}});
  t += 8;
  run.step();  // 12 s: a line
  run.epoch_end();
  run.evaluate(Logs{{"eval_loss", 0.5}, {"epoch", 0.5}});
  t += 8;
  run.step();
  run.step();
  run.end();
  CHECK(out.str() ==
        "{'loss': 0.123456, 'epoch': 0.25}\n"
        "step 2/4 (50%) | elapsed 0:00:12 | eta 0:00:12 | 0.17 it/s | loss 0.1235\n"
        "step 2/4 (50%) | elapsed 0:00:12 | eta 0:00:12 | 0.17 it/s | loss 0.1235\n"
        "{'eval_loss': 0.5, 'epoch': 0.5}\n"
        "step 4/4 (100%) | elapsed 0:00:20 | eta 0:00:00 | 0.20 it/s | loss 0.1235\n");
  CHECK(out.str().find('\r') == std::string::npos);
  CHECK(out.str().find('\x1b') == std::string::npos);
}

TEST_CASE("Progress replaces long strings and prints nothing for a standalone evaluate", "[callbacks][progress]") {
  std::ostringstream out;
  Run run;
  auto progress = run.handler.add_callback<ProgressCallback>(out, ProgressMode::plain);
  progress->set_max_str_len(5);
  run.evaluate(Logs{{"eval_loss", 0.5}});  // before training: not printed (HF)
  CHECK(out.str().empty());
  run.begin();
  run.log(Logs{{"text", "abcdefgh"}, {"short", "abc"}});
  CHECK_THAT(out.str(), Catch::Contains("{'text': '[String too long to display, length: 8 > 5. Consider increasing "
                                        "`max_str_len` if needed.]', 'short': 'abc'}"));
}

TEST_CASE("Progress draws a redrawn bar on a real terminal and plain lines on a pipe", "[callbacks][progress]") {
  const int master = ::posix_openpt(O_RDWR | O_NOCTTY);
  REQUIRE(master >= 0);
  REQUIRE(::grantpt(master) == 0);
  REQUIRE(::unlockpt(master) == 0);
  const int slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
  REQUIRE(slave >= 0);
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  test::ScopedEnv unset("TORCHFIT_PROGRESS", std::nullopt);

  SECTION("automatic mode follows the file descriptor") {
    std::ostringstream sink;
    CHECK(ProgressCallback(sink, ProgressMode::automatic, slave).mode() == ProgressMode::bar);
    CHECK(ProgressCallback(sink, ProgressMode::automatic, pipe_fds[1]).mode() == ProgressMode::plain);
    CHECK(ProgressCallback(sink).mode() == ProgressMode::plain);  // a string stream is no terminal
    test::ScopedEnv forced("TORCHFIT_PROGRESS", "off");
    CHECK(ProgressCallback(sink, ProgressMode::automatic, slave).mode() == ProgressMode::off);
  }
  SECTION("the bar is redrawn in place, logs go above it, the eval bar disappears inside training") {
    FdStream terminal(slave);
    double t = 0;
    Run run;
    auto progress = std::make_shared<ProgressCallback>(terminal, ProgressMode::automatic, slave);
    progress->set_clock([&] { return t; });
    run.handler.add_callback(progress);
    run.begin();
    t = 1;
    run.step();
    t = 2;
    run.step();
    run.log(Logs{{"loss", 0.25}, {"epoch", 0.5}});
    run.evaluate(Logs{{"eval_loss", 0.5}});
    t = 4;
    run.step();
    run.step();
    run.end();
    const std::string screen = drain(master);
    CHECK_THAT(screen, Catch::Contains("\r  0%|"));
    CHECK_THAT(screen, Catch::Contains("| 1/4 [0:00:01<0:00:03, 1.00it/s]"));
    CHECK_THAT(screen, Catch::Contains("\r\x1b[K{'loss': 0.25, 'epoch': 0.5}"));
    CHECK_THAT(screen, Catch::Contains("eval  50%|"));
    CHECK_THAT(screen, Catch::Contains("eval 100%|"));
    CHECK_THAT(screen, Catch::Contains("100%|"));
    CHECK_THAT(screen, Catch::Contains("| 4/4 [0:00:04<0:00:00, 1.00it/s, loss=0.25]"));
    CHECK(screen.find("\u2588") != std::string::npos);
  }
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  ::close(slave);
  ::close(master);
}

TEST_CASE("EarlyStopping stops after patience evaluations without improvement", "[callbacks][early_stopping]") {
  Run run;
  run.args.eval_strategy = IntervalStrategy::steps;
  auto evaluate = [&](double loss) {
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_loss", loss}});
    return run.control.should_training_stop;
  };

  SECTION("HF's constructor: patience and threshold") {
    auto es = run.handler.add_callback<EarlyStoppingCallback>(2, 0.1);
    run.begin();
    CHECK(es->monitor() == "eval_loss");
    CHECK(!evaluate(1.0));
    CHECK(!evaluate(0.95));  // better, but not by more than 0.1
    CHECK(es->patience_counter() == 1);
    CHECK(!evaluate(0.8));   // better by 0.2: counter reset
    CHECK(es->patience_counter() == 0);
    CHECK(!evaluate(0.9));
    CHECK(evaluate(0.85));
    CHECK(run.control.stop_reason ==
          "early stopping: eval_loss did not improve by more than 0.1 for 2 evaluations (best 0.8)");
  }
  SECTION("mode max from metric_for_best_model and greater_is_better") {
    run.args.metric_for_best_model = "accuracy";
    run.args.greater_is_better = true;
    auto es = run.handler.add_callback<EarlyStoppingCallback>(1);
    run.begin();
    CHECK(es->monitor() == "eval_accuracy");
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_accuracy", 0.5}});
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_accuracy", 0.6}});
    CHECK(!run.control.should_training_stop);
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_accuracy", 0.6}});  // a tie is no gain
    CHECK(run.control.should_training_stop);
  }
  SECTION("a NaN metric stops at once") {
    run.handler.add_callback<EarlyStoppingCallback>(5);
    run.begin();
    CHECK(evaluate(NAN));
    CHECK(run.control.stop_reason == "early stopping: eval_loss is nan");
  }
  SECTION("stopping and divergence thresholds") {
    EarlyStoppingOptions o;
    o.patience = 10;
    o.stopping_threshold = 0.1;
    o.divergence_threshold = 5.0;
    run.handler.add_callback<EarlyStoppingCallback>(o);
    run.begin();
    CHECK(!evaluate(1.0));
    CHECK(evaluate(6.0));
    CHECK_THAT(run.control.stop_reason, Catch::Contains("crossed the divergence threshold 5.0"));
    run.control = TrainerControl{};
    CHECK(evaluate(0.05));
    CHECK_THAT(run.control.stop_reason, Catch::Contains("reached the stopping threshold 0.1"));
  }
  SECTION("explicit monitor and mode") {
    EarlyStoppingOptions o;
    o.monitor = "f1";
    o.mode = "max";
    o.min_delta = 0.01;
    auto es = run.handler.add_callback<EarlyStoppingCallback>(o);
    run.begin();
    CHECK(es->monitor() == "eval_f1");
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_f1", 0.5}});
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_f1", 0.505}});
    CHECK(run.control.should_training_stop);
  }
  SECTION("a missing metric warns, naming what exists, and changes nothing") {
    run.args.metric_for_best_model = "f1";
    auto es = run.handler.add_callback<EarlyStoppingCallback>(1);
    run.begin();
    test::CaptureLog log;
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_loss", 1.0}, {"eval_accuracy", 0.5}});
    CHECK_THAT(log.text(), Catch::Contains("watches \"eval_f1\"") && Catch::Contains("eval_loss, eval_accuracy"));
    CHECK(es->patience_counter() == 0);
    CHECK(!run.control.should_training_stop);
  }
  SECTION("state() and load_state() carry the counter and the best value") {
    auto es = run.handler.add_callback<EarlyStoppingCallback>(3, 0.0);
    run.begin();
    evaluate(1.0);
    evaluate(2.0);
    const json s = es->state();
    CHECK(s.dump() == R"({"args":{"early_stopping_patience":3,"early_stopping_threshold":0.0},)"
                      R"("attributes":{"early_stopping_patience_counter":1,"best_value":1.0}})");
    EarlyStoppingCallback restored(3, 0.0);
    restored.load_state(s);
    CHECK(restored.patience_counter() == 1);
    CHECK(restored.best_value() == 1.0);
  }
}

TEST_CASE("EarlyStopping refuses to run without evaluations", "[callbacks][early_stopping]") {
  Run run;
  run.handler.add_callback<EarlyStoppingCallback>(1);
  CHECK_THROWS_AS(run.begin(), ArgumentError);
  CHECK_THROWS_WITH(run.begin(), Catch::Contains("--eval_strategy"));
  CHECK_THROWS_WITH(EarlyStoppingCallback(0), Catch::Contains("patience must be >= 1 (got 0)"));
}
