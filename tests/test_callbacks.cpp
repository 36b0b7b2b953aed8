// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <termios.h>
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

// A pseudo-terminal (no extra library: posix_openpt from libc); `slave` is what a program would write to.
struct PseudoTerminal {
  int master = -1, slave = -1;
  PseudoTerminal() {
    master = ::posix_openpt(O_RDWR | O_NOCTTY);
    REQUIRE(master >= 0);
    REQUIRE(::grantpt(master) == 0);
    REQUIRE(::unlockpt(master) == 0);
    slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
    REQUIRE(slave >= 0);
    termios mode{};
    REQUIRE(::tcgetattr(slave, &mode) == 0);
    mode.c_oflag &= ~static_cast<tcflag_t>(OPOST);  // read back exactly the bytes written ('\n' stays '\n')
    REQUIRE(::tcsetattr(slave, TCSANOW, &mode) == 0);
  }
  ~PseudoTerminal() {
    ::close(slave);
    ::close(master);
  }
  PseudoTerminal(const PseudoTerminal&) = delete;
  PseudoTerminal& operator=(const PseudoTerminal&) = delete;
  std::string screen() const { return drain(master); }
};

struct Pipe {
  int fds[2] = {-1, -1};
  Pipe() { REQUIRE(::pipe(fds) == 0); }
  ~Pipe() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
};

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// The bar as drawn on an 80-column terminal (a new pseudo-terminal reports 0 columns; 80 is the fallback):
// the bar takes what the text leaves of the line but 6 columns, filled in proportion, rounded down.
std::string bar(int percent, const std::string& suffix) {
  const std::string prefix = fmt::format("{:3}%|", percent);
  const int width = 80 - static_cast<int>(prefix.size() + suffix.size()) - 6;
  std::string out = prefix;
  for (int i = 0; i < width; ++i) out += i < width * percent / 100 ? "\u2588" : " ";
  return out + suffix;
}

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

TEST_CASE("Progress in plain mode prints rate-limited lines and logs, never a carriage return",
          "[callbacks][progress]") {
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
  run.step();       // 12 s: a line
  run.epoch_end();  // same step as the last line: not repeated
  run.evaluate(Logs{{"eval_loss", 0.5}, {"epoch", 0.125}});
  t += 8;
  run.step();  // 8 s since the last line: none
  t += 1;
  run.step();
  run.epoch_end();  // the epoch-end line
  run.end();        // same step: not repeated
  CHECK(out.str() ==
        "{'loss': 0.123456, 'epoch': 0.25}\n"
        "step 2/4 (50%) | elapsed 0:00:12 | eta 0:00:12 | 0.17 it/s | loss 0.1235\n"
        "{'eval_loss': 0.5, 'epoch': 0.12}\n"  // Python's round(0.125, 2)
        "step 4/4 (100%) | elapsed 0:00:21 | eta 0:00:00 | 0.19 it/s | loss 0.1235\n");
  CHECK(out.str().find('\r') == std::string::npos);
  CHECK(out.str().find('\x1b') == std::string::npos);
}

TEST_CASE("Progress counts only this run's steps in the rate after a resume", "[callbacks][progress]") {
  std::ostringstream out;
  double t = 0;
  Run run;
  run.state.max_steps = 10;
  run.state.global_step = 6;  // restored from a checkpoint
  auto progress = std::make_shared<ProgressCallback>(out, ProgressMode::plain);
  progress->set_clock([&] { return t; });
  run.handler.add_callback(progress);
  run.begin();
  t = 30;
  run.step();  // 30 s: a line
  run.step();  // none: the interval starts again
  t = 35;
  run.end();
  CHECK(out.str() ==
        "step 7/10 (70%) | elapsed 0:00:30 | eta 0:01:30 | 0.03 it/s\n"
        "step 8/10 (80%) | elapsed 0:00:35 | eta 0:00:35 | 0.06 it/s\n");
}

TEST_CASE("Progress replaces long strings and prints nothing for a standalone evaluate",
          "[callbacks][progress]") {
  std::ostringstream out;
  Run run;
  auto progress = run.handler.add_callback<ProgressCallback>(out, ProgressMode::plain);
  progress->set_max_str_len(5);
  run.evaluate(Logs{{"eval_loss", 0.5}});  // before training: not printed (HF)
  CHECK(out.str().empty());
  run.begin();
  run.log(Logs{{"text", "abcdefgh"}, {"short", "abc"}});
  CHECK_THAT(out.str(),
             Catch::Contains("{'text': '[String too long to display, length: 8 > 5. Consider increasing "
                             "`max_str_len` if needed.]', 'short': 'abc'}"));
}

TEST_CASE("Progress picks a bar on a terminal and plain lines elsewhere, TORCHFIT_PROGRESS overrides",
          "[callbacks][progress]") {
  PseudoTerminal tty;
  Pipe pipe;
  std::ostringstream sink;
  test::ScopedEnv unset("TORCHFIT_PROGRESS", std::nullopt);
  CHECK(ProgressCallback(sink, ProgressMode::automatic, tty.slave).mode() == ProgressMode::bar);
  CHECK(ProgressCallback(sink, ProgressMode::automatic, pipe.fds[1]).mode() == ProgressMode::plain);
  CHECK(ProgressCallback(sink).mode() == ProgressMode::plain);  // a string stream is no terminal
  CHECK(ProgressCallback(sink, ProgressMode::bar, pipe.fds[1]).mode() == ProgressMode::bar);
  {
    test::ScopedEnv forced("TORCHFIT_PROGRESS", "off");
    CHECK(ProgressCallback(sink, ProgressMode::automatic, tty.slave).mode() == ProgressMode::off);
  }
  {
    test::ScopedEnv forced("TORCHFIT_PROGRESS", "plain");
    CHECK(ProgressCallback(sink, ProgressMode::automatic, tty.slave).mode() == ProgressMode::plain);
    CHECK(ProgressCallback(sink, ProgressMode::bar, tty.slave).mode() == ProgressMode::bar);  // explicit wins
  }
  {
    test::ScopedEnv forced("TORCHFIT_PROGRESS", "bar");
    CHECK(ProgressCallback(sink, ProgressMode::automatic, pipe.fds[1]).mode() == ProgressMode::bar);
  }
  {
    test::ScopedEnv forced("TORCHFIT_PROGRESS", "fancy");
    test::CaptureLog log;
    CHECK(ProgressCallback(sink, ProgressMode::automatic, pipe.fds[1]).mode() == ProgressMode::plain);
    CHECK_THAT(log.text(),
               Catch::Contains("TORCHFIT_PROGRESS must be auto, bar, plain or off (got \"fancy\")"));
  }
}

TEST_CASE("Progress draws a bar redrawn in place on a real terminal", "[callbacks][progress]") {
  PseudoTerminal tty;
  FdStream terminal(tty.slave);
  test::ScopedEnv unset("TORCHFIT_PROGRESS", std::nullopt);
  double t = 0;
  Run run;
  auto progress = std::make_shared<ProgressCallback>(terminal, ProgressMode::automatic, tty.slave);
  progress->set_clock([&] { return t; });
  run.handler.add_callback(progress);
  REQUIRE(progress->mode() == ProgressMode::bar);

  SECTION("logs go above the bar, the evaluation bar disappears when training goes on") {
    run.begin();
    t = 1;
    run.step();
    t = 2;
    run.step();
    run.log(Logs{{"loss", 0.25}, {"epoch", 0.5}, {"total_flos", 3.0}});
    t = 2.5;
    run.evaluate(Logs{{"eval_loss", 0.5}});
    t = 4;
    run.step();
    run.step();
    run.end();
    const std::string screen = tty.screen();
    CHECK(screen == "\r" + bar(0, "| 0/4 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K"                     //
                        + "\r" + bar(25, "| 1/4 [0:00:01<0:00:03, 1.00it/s]") + "\x1b[K"              //
                        + "\r" + bar(50, "| 2/4 [0:00:02<0:00:02, 1.00it/s]") + "\x1b[K"              //
                        + "\r\x1b[K{'loss': 0.25, 'epoch': 0.5}\n"                                    //
                        + "\r" + bar(50, "| 2/4 [0:00:02<0:00:02, 1.00it/s, loss=0.25]") + "\x1b[K"   //
                        + "\reval " + bar(50, "| 1/2 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K"         //
                        + "\reval " + bar(100, "| 2/2 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K"        //
                        + "\r\x1b[K{'eval_loss': 0.5}\n"                                              //
                        + "\reval " + bar(100, "| 2/2 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K"        //
                        + "\r" + bar(50, "| 2/4 [0:00:02<0:00:02, 0.80it/s, loss=0.25]") + "\x1b[K"   //
                        + "\r" + bar(75, "| 3/4 [0:00:04<0:00:01, 0.75it/s, loss=0.25]") + "\x1b[K"   //
                        + "\r" + bar(100, "| 4/4 [0:00:04<0:00:00, 1.00it/s, loss=0.25]") + "\x1b[K"  //
                        + "\r" + bar(100, "| 4/4 [0:00:04<0:00:00, 1.00it/s, loss=0.25]") + "\x1b[K\n");
  }
  SECTION("unforced redraws come at most ten times a second") {
    run.begin();
    t = 0.05;
    run.step();  // too soon
    t = 0.2;
    run.step();
    t = 0.25;
    run.step();  // too soon
    t = 0.26;
    run.step();  // the last step is always drawn
    const std::string screen = tty.screen();
    CHECK(count(screen, "\r") == 3);
    CHECK_THAT(screen, Catch::Contains("| 0/4 ") && Catch::Contains("| 2/4 ") && Catch::Contains("| 4/4 "));
  }
  SECTION("write() and library messages print above the bar; the postfix keeps 4 significant digits") {
    run.begin();
    t = 1;
    run.step();
    ProgressCallback::write("sample: hello", terminal);
    {
      test::CaptureLog log;  // messages go to their own stream; the bar on the terminal makes way for them
      log::warning("disk almost full");
      CHECK(log.text() == "[torchfit] warning: disk almost full\n");
    }
    run.log(Logs{{"loss", 0.123456789}});
    run.end();
    ProgressCallback::write("after training", terminal);  // no bar any more: just the line
    const std::string one = "\r" + bar(25, "| 1/4 [0:00:01<0:00:03, 1.00it/s]") + "\x1b[K";
    const std::string with_loss = "\r" + bar(25, "| 1/4 [0:00:01<0:00:03, 1.00it/s, loss=0.1235]") + "\x1b[K";
    CHECK(tty.screen() == "\r" + bar(0, "| 0/4 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K" + one  //
                              + "\r\x1b[Ksample: hello\n" + one                                //
                              + "\r\x1b[K" + one                                               //
                              + "\r\x1b[K{'loss': 0.123456789}\n" + with_loss                  //
                              + with_loss + "\n"                                               //
                              + "after training\n");
  }
  SECTION("a standalone evaluation keeps its finished bar and prints no logs") {
    t = 10;
    run.handler.on_prediction_step(run.args, run.state, run.control);
    t = 11;
    run.handler.on_prediction_step(run.args, run.state, run.control);
    run.handler.on_log(run.args, run.state, run.control, Logs{{"eval_loss", 0.5}});
    run.handler.on_evaluate(run.args, run.state, run.control, Logs{{"eval_loss", 0.5}});
    CHECK(tty.screen() == "\reval " + bar(50, "| 1/2 [0:00:00<0:00:00, 0.00it/s]") + "\x1b[K"         //
                              + "\reval " + bar(100, "| 2/2 [0:00:01<0:00:00, 2.00it/s]") + "\x1b[K"  //
                              + "\reval " + bar(100, "| 2/2 [0:00:01<0:00:00, 2.00it/s]") + "\x1b[K\n");
  }
}

TEST_CASE("EarlyStopping stops after patience evaluations without improvement",
          "[callbacks][early_stopping]") {
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
    CHECK(!evaluate(0.8));  // better by 0.2: counter reset
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
    run.handler.on_evaluate(run.args, run.state, run.control,
                            Logs{{"eval_accuracy", 0.6}});  // a tie is no gain
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
  SECTION("a missing metric warns once, naming what exists, and changes nothing") {
    run.args.metric_for_best_model = "f1";
    auto es = run.handler.add_callback<EarlyStoppingCallback>(1);
    run.begin();
    test::CaptureLog log;
    run.handler.on_evaluate(run.args, run.state, run.control,
                            Logs{{"eval_loss", 1.0}, {"eval_accuracy", 0.5}});
    run.handler.on_evaluate(run.args, run.state, run.control,
                            Logs{{"eval_loss", 2.0}, {"eval_accuracy", 0.4}});
    CHECK(log.text() ==
          "[torchfit] warning: EarlyStoppingCallback watches \"eval_f1\" but the evaluation has no such "
          "number (it "
          "has: eval_loss, eval_accuracy); set metric_for_best_model or EarlyStoppingOptions::monitor to one "
          "of "
          "these. Early stopping does nothing until the metric appears\n");
    CHECK(es->patience_counter() == 0);
    CHECK(!es->best_value());
    CHECK(!run.control.should_training_stop);
  }
  SECTION("a NaN without check_finite counts as no improvement and never becomes the best") {
    EarlyStoppingOptions o;
    o.patience = 2;
    o.check_finite = false;
    auto es = run.handler.add_callback<EarlyStoppingCallback>(o);
    run.begin();
    CHECK(!evaluate(1.0));
    CHECK(!evaluate(NAN));
    CHECK(es->patience_counter() == 1);
    CHECK(es->best_value() == 1.0);
    CHECK(!evaluate(0.5));
    CHECK(es->patience_counter() == 0);
  }
  SECTION("auto mode: greater_is_better applies to metric_for_best_model only; other names by their ending") {
    run.args.metric_for_best_model = "eval_accuracy";
    run.args.greater_is_better = false;  // odd, but it is what the user asked for this metric
    test::CaptureLog quiet;              // three instances of one class draw the handler's duplicate warning
    EarlyStoppingOptions o;
    auto watch_accuracy = run.handler.add_callback<EarlyStoppingCallback>(o);
    o.monitor = "bleu";
    auto watch_bleu = run.handler.add_callback<EarlyStoppingCallback>(o);
    o.monitor = "eval_perplexity_loss";
    auto watch_loss = run.handler.add_callback<EarlyStoppingCallback>(o);
    run.begin();
    auto metrics = [](double v) {
      return Logs{{"eval_accuracy", v}, {"eval_bleu", v}, {"eval_perplexity_loss", v}};
    };
    run.handler.on_evaluate(run.args, run.state, run.control, metrics(0.5));
    run.handler.on_evaluate(run.args, run.state, run.control, metrics(0.4));
    CHECK(watch_accuracy->patience_counter() == 0);  // min: lower is better
    CHECK(watch_bleu->patience_counter() == 1);      // max
    CHECK(watch_loss->patience_counter() == 0);      // min
    CHECK(watch_bleu->stop_reason() ==
          "early stopping: eval_bleu did not improve by more than 0.0 for 1 evaluation (best 0.5)");
    CHECK(watch_accuracy->stop_reason().empty());
  }
  SECTION("state() and load_state() carry the counter and the best value") {
    auto es = run.handler.add_callback<EarlyStoppingCallback>(3, 0.0);
    run.begin();
    evaluate(1.0);
    evaluate(2.0);
    const json s = es->state();
    CHECK(s.dump() == R"({"args":{"early_stopping_patience":3,"early_stopping_threshold":0.0},)"
                      R"("attributes":{"early_stopping_patience_counter":1,"best_value":1.0}})");
    Run resumed;
    resumed.args.eval_strategy = IntervalStrategy::steps;
    auto restored = resumed.handler.add_callback<EarlyStoppingCallback>(3, 0.0);
    restored->load_state(s);
    CHECK(restored->patience_counter() == 1);
    CHECK(restored->best_value() == 1.0);
    resumed.begin();
    resumed.handler.on_evaluate(resumed.args, resumed.state, resumed.control, Logs{{"eval_loss", 1.0}});
    CHECK(restored->patience_counter() == 2);  // a tie with the restored best is no improvement
    CHECK(!resumed.control.should_training_stop);
    resumed.handler.on_evaluate(resumed.args, resumed.state, resumed.control, Logs{{"eval_loss", 1.5}});
    CHECK(
        resumed.control.should_training_stop);  // the third in a row, counting the one before the checkpoint
    CHECK(restored->stop_reason() ==
          "early stopping: eval_loss did not improve by more than 0.0 for 3 evaluations (best 1.0)");
  }
  SECTION("the reason of a stop is printed by default, with the step") {
    run.handler.add_callback<EarlyStoppingCallback>(1);
    run.begin();
    run.state.global_step = 7;
    test::CaptureLog log(log::Level::notice);
    evaluate(1.0);
    evaluate(1.5);
    CHECK(
        log.text() ==
        "[torchfit] early stopping: eval_loss did not improve by more than 0.0 for 1 evaluation (best 1.0); "
        "training stops at step 7\n");
  }
  SECTION("mode auto warns when the monitor looks like an error measure") {
    EarlyStoppingOptions o;
    o.monitor = "callbacks_mae";
    auto es = run.handler.add_callback<EarlyStoppingCallback>(o);
    test::CaptureLog log;
    run.begin();
    CHECK_THAT(log.text(),
               Catch::StartsWith("[torchfit] warning: \"eval_callbacks_mae\" looks like an error "
                                 "measure (lower is better)") &&
                   Catch::EndsWith("Set EarlyStoppingOptions::mode to \"min\" if lower is better, or "
                                   "\"max\" to keep this and silence the warning\n"));
    o.mode = "min";
    run.handler.remove_callback(*es);
    run.handler.add_callback<EarlyStoppingCallback>(o);
    test::CaptureLog quiet;
    run.begin();
    CHECK(quiet.text().empty());
  }
  SECTION("state written by HF (no best value) restores the counter") {
    EarlyStoppingCallback restored(3, 0.0);
    restored.load_state(
        json::parse(R"({"args": {"early_stopping_patience": 3, "early_stopping_threshold": 0.0},
                                        "attributes": {"early_stopping_patience_counter": 2}})"));
    CHECK(restored.patience_counter() == 2);
    CHECK(!restored.best_value());
  }
}

TEST_CASE("EarlyStopping refuses to run without evaluations", "[callbacks][early_stopping]") {
  Run run;
  run.handler.add_callback<EarlyStoppingCallback>(1);
  CHECK_THROWS_AS(run.begin(), ArgumentError);
  CHECK_THROWS_WITH(run.begin(),
                    "EarlyStoppingCallback needs evaluations to watch: set --eval_strategy to \"steps\" "
                    "or \"epoch\" (got \"no\")");
  CHECK_THROWS_WITH(EarlyStoppingCallback(0), Catch::Contains("patience must be >= 1 (got 0)"));
}
