// SPDX-License-Identifier: MIT
#pragma once

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "torchfit/detail/console.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"

namespace torchfit {

/// How ProgressCallback draws: a redrawn bar (terminal), plain lines (pipe, file), nothing, or chosen from
/// the stream (automatic).
enum class ProgressMode { automatic, bar, plain, off };

/// The mode TORCHFIT_PROGRESS asks for (auto|bar|plain|off); automatic when unset, and when unknown (with a
/// warning naming the accepted values).
inline ProgressMode progress_mode_from_env() {
  const char* v = std::getenv("TORCHFIT_PROGRESS");
  if (v == nullptr || std::strcmp(v, "auto") == 0) return ProgressMode::automatic;
  if (std::strcmp(v, "bar") == 0) return ProgressMode::bar;
  if (std::strcmp(v, "plain") == 0) return ProgressMode::plain;
  if (std::strcmp(v, "off") == 0) return ProgressMode::off;
  log::warning("TORCHFIT_PROGRESS must be auto, bar, plain or off (got \"{}\"); using auto", v);
  return ProgressMode::automatic;
}

namespace detail {

inline std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

/// Python's `round(value, digits)`: the nearest double to the correctly rounded decimal, ties to even on the
/// exact binary value (`round(0.125, 2) == 0.12`), which printf's conversion also does.
inline double python_round(double value, int digits) {
  if (!std::isfinite(value)) return value;
  char text[512];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return std::strtod(text, nullptr);
}

}  // namespace detail

/// Training progress (HF's ProgressCallback), aware of where it writes. On a terminal: a bar redrawn in place
/// at most 10 times a second with step/total, elapsed, ETA, it/s and the last loss (4 significant digits),
/// logs printed above it, and an evaluation bar. On a pipe or file: plain lines, never a carriage return or
/// escape code, at most one progress line per `plain_interval` seconds plus one per epoch end and one at the
/// end. World process zero only. While the bar is drawn, library messages and write() print above it.
class ProgressCallback : public TrainerCallback, private detail::LiveLine {
 public:
  /// `tty_fd` is the file descriptor behind `out` for the terminal check (default: 2 for std::cerr/std::clog,
  /// 1 for std::cout; other streams count as files). TORCHFIT_PROGRESS overrides an automatic mode.
  explicit ProgressCallback(std::ostream& out = std::cerr, ProgressMode mode = ProgressMode::automatic,
                            int tty_fd = -1)
      : out_(out), fd_(tty_fd >= 0 ? tty_fd : default_fd(out)) {
    if (mode == ProgressMode::automatic) mode = progress_mode_from_env();
    mode_ = mode != ProgressMode::automatic ? mode
            : (fd_ >= 0 && ::isatty(fd_))   ? ProgressMode::bar
                                            : ProgressMode::plain;
  }

  ~ProgressCallback() override { release_terminal(); }
  ProgressCallback(const ProgressCallback&) = delete;
  ProgressCallback& operator=(const ProgressCallback&) = delete;

  /// Prints `line` on `out` without breaking a progress bar being drawn (tqdm's write): the bar is cleared,
  /// the line printed, and the bar drawn again below it. For callbacks that print, from any thread.
  static void write(std::string_view line, std::ostream& out = std::cout) { detail::print_line(out, line); }

  /// The mode in use after resolving `automatic`.
  ProgressMode mode() const { return mode_; }
  /// Seconds between plain progress lines (default 30).
  void set_plain_interval(double seconds) { plain_interval_ = seconds; }
  /// Source of seconds (default: a steady clock); tests inject a fake one.
  void set_clock(std::function<double()> clock) { clock_ = std::move(clock); }
  /// Longer string values in logs are replaced by a notice (HF's max_str_len, default 100).
  void set_max_str_len(std::size_t n) { max_str_len_ = n; }

  void on_train_begin(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!active(state)) return;
    training_ = true;
    start_time_ = last_line_time_ = now();
    start_step_ = current_step_ = state.global_step;
    last_line_step_.reset();
    total_ = state.max_steps;
    if (mode_ == ProgressMode::bar) {
      claim_terminal();
      redraw(true);
    }
  }

  void on_step_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!active(state) || !training_) return;
    current_step_ = state.global_step;
    if (mode_ == ProgressMode::bar)
      redraw(current_step_ >= total_);
    else if (now() - last_line_time_ >= plain_interval_)
      plain_line();
  }

  void on_epoch_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (active(state) && training_ && mode_ == ProgressMode::plain) plain_line();
  }

  void on_prediction_step(const Args&, TrainerState& state, TrainerControl&,
                          const CallbackContext& ctx) override {
    if (!active(state) || mode_ != ProgressMode::bar || ctx.eval_dataloader == nullptr ||
        ctx.eval_dataloader->num_batches <= 0)
      return;
    const bool first = !eval_done_;
    if (first) {
      eval_total_ = ctx.eval_dataloader->num_batches;
      eval_start_ = now();
      claim_terminal();  // already held inside training
    }
    eval_done_ = eval_done_.value_or(0) + 1;
    redraw(first || *eval_done_ >= eval_total_);
  }

  void on_evaluate(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    close_eval_bar(state);
  }
  void on_predict(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    close_eval_bar(state);
  }

  void on_log(const Args&, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!active(state) || !training_) return;  // HF prints nothing for a standalone evaluate()
    Logs shown = *ctx.logs;
    shown.erase("total_flos");
    if (shown.contains("loss") && shown.at("loss").is_number()) last_loss_ = shown.at("loss").get<double>();
    if (shown.contains("epoch") && shown.at("epoch").is_number())
      shown["epoch"] = detail::python_round(shown.at("epoch").get<double>(), 2);
    for (auto& item : shown.items())
      if (item.value().is_string() && item.value().get_ref<const std::string&>().size() > max_str_len_)
        item.value() = fmt::format(
            "[String too long to display, length: {} > {}. Consider increasing `max_str_len` if "
            "needed.]",
            item.value().get_ref<const std::string&>().size(), max_str_len_);
    if (mode_ != ProgressMode::bar) return detail::print_line(out_, detail::python_repr(shown));
    // As print_line, but the bar comes back up to date (with this log's loss).
    std::lock_guard<std::mutex> lock(detail::console().mutex);
    clear();
    out_ << detail::python_repr(shown) << '\n';
    draw(now());
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!active(state) || !training_) return;
    if (mode_ == ProgressMode::bar) {
      redraw(true);
      release_terminal();
      std::lock_guard<std::mutex> lock(detail::console().mutex);
      out_ << '\n' << std::flush;
    } else {
      plain_line();
    }
    training_ = false;
  }

 private:
  static constexpr double redraw_interval = 0.1;

  static int default_fd(const std::ostream& out) {
    if (&out == &std::cerr || &out == &std::clog) return 2;
    if (&out == &std::cout) return 1;
    return -1;
  }

  bool active(const TrainerState& state) const {
    return mode_ != ProgressMode::off && state.is_world_process_zero;
  }
  double now() const {
    if (clock_) return clock_();
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  int terminal_width() const {
    winsize w{};
    if (fd_ >= 0 && ::ioctl(fd_, TIOCGWINSZ, &w) == 0 && w.ws_col > 20) return w.ws_col;
    return 80;
  }

  static double rate(int64_t done, double elapsed) {
    return elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  }
  static double eta(int64_t left, double it_s) { return it_s > 0 ? static_cast<double>(left) / it_s : 0.0; }

  // " 40%|████      | 2/5 [0:00:01<0:00:01, 1.98it/s, loss=0.25]" as tqdm draws it, sized to the terminal;
  // `done_this_run` excludes the steps restored on resume from the rate.
  std::string bar_text(int64_t n, int64_t total, int64_t done_this_run, double elapsed,
                       std::optional<double> loss) const {
    const double it_s = rate(done_this_run, elapsed);
    const double fraction =
        total > 0 ? std::min(1.0, static_cast<double>(n) / static_cast<double>(total)) : 0.0;
    std::string suffix = fmt::format("| {}/{} [{}<{}, {:.2f}it/s", n, total, detail::clock_text(elapsed),
                                     detail::clock_text(eta(total - n, it_s)), it_s);
    if (loss) suffix += fmt::format(", loss={:.4g}", *loss);
    suffix += "]";
    const std::string prefix = fmt::format("{:3.0f}%|", fraction * 100.0);
    const int width = std::max(10, terminal_width() - static_cast<int>(prefix.size() + suffix.size()) - 6);
    const int filled = static_cast<int>(fraction * width);
    std::string bar;
    for (int i = 0; i < width; ++i) bar += i < filled ? "\u2588" : " ";
    return prefix + bar + suffix;
  }

  // Redraws the line in place: the evaluation bar while an evaluation runs, else the training bar; unforced
  // redraws at most every redraw_interval seconds (tqdm's mininterval).
  void redraw(bool force) {
    const double t = now();
    if (!force && t - last_draw_time_ < redraw_interval) return;
    last_draw_time_ = t;
    std::lock_guard<std::mutex> lock(detail::console().mutex);
    draw(t);
  }

  // With the console's mutex held.
  void draw(double t) {
    drawn_ =
        "\r" +
        (eval_done_
             ? "eval " + bar_text(*eval_done_, eval_total_, *eval_done_, t - eval_start_, std::nullopt)
             : bar_text(current_step_, total_, current_step_ - start_step_, t - start_time_, last_loss_)) +
        "\x1b[K";
    out_ << drawn_ << std::flush;
  }

  // detail::LiveLine, around a line printed while the bar is drawn, maybe from another thread: the bar as
  // last drawn, since its counters belong to the training thread.
  void clear() override { out_ << "\r\x1b[K"; }
  void redraw() override { out_ << drawn_ << std::flush; }

  // While training draws a bar, messages and write() go above it.
  void claim_terminal() {
    std::lock_guard<std::mutex> lock(detail::console().mutex);
    detail::console().live = this;
  }
  void release_terminal() {
    std::lock_guard<std::mutex> lock(detail::console().mutex);
    if (detail::console().live == this) detail::console().live = nullptr;
  }

  // One plain progress line, unless the last one already showed this step (an epoch end at the last step is
  // followed by the end of training).
  void plain_line() {
    if (last_line_step_ == current_step_) return;
    const double t = now();
    last_line_time_ = t;
    last_line_step_ = current_step_;
    const double elapsed = t - start_time_;
    const double it_s = rate(current_step_ - start_step_, elapsed);
    std::string line = fmt::format(
        "step {}/{} ({:.0f}%) | elapsed {} | eta {} | {:.2f} it/s", current_step_, total_,
        total_ > 0 ? 100.0 * static_cast<double>(current_step_) / static_cast<double>(total_) : 0.0,
        detail::clock_text(elapsed), detail::clock_text(eta(total_ - current_step_, it_s)), it_s);
    if (last_loss_) line += fmt::format(" | loss {:.4g}", *last_loss_);
    detail::print_line(out_, line);
  }

  // HF's `leave` rule: the evaluation bar disappears inside training (the training bar is drawn over it) and
  // stays, completed, for a standalone evaluation.
  void close_eval_bar(const TrainerState& state) {
    if (!active(state) || !eval_done_) return;
    if (training_) {
      eval_done_.reset();
      redraw(true);
    } else {
      redraw(true);
      eval_done_.reset();
      release_terminal();
      std::lock_guard<std::mutex> lock(detail::console().mutex);
      out_ << '\n' << std::flush;
    }
  }

  std::ostream& out_;
  std::string drawn_;  // the bar's last drawing, guarded by the console's mutex
  int fd_;
  ProgressMode mode_;
  double plain_interval_ = 30.0;
  std::function<double()> clock_;
  std::size_t max_str_len_ = 100;

  bool training_ = false;
  double start_time_ = 0, last_draw_time_ = 0, last_line_time_ = 0;
  int64_t start_step_ = 0, current_step_ = 0, total_ = 0;
  std::optional<int64_t> last_line_step_;
  std::optional<double> last_loss_;
  std::optional<int64_t> eval_done_;
  int64_t eval_total_ = 0;
  double eval_start_ = 0;
};

}  // namespace torchfit
