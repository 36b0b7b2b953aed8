// SPDX-License-Identifier: MIT
// The rows a tracker sends to its server, and the thread that sends them: the training thread only queues, an
// outage is retried for as long as the run lasts, and what could not be sent is kept in a file.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/retry.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// When an Outbox's keep-alive runs.
enum class KeepAlive {
  when_idle,  // after its interval without any request (a server that takes silence for a dead client)
  periodic,   // every interval, between rows when the outbox is busy (a server that expects a heartbeat)
};

/// Rows (one line of text each, a request or a piece of one) that a tracker sends to its server, in order,
/// from a thread of their own. The training thread only queues: push() never waits on the network. Rows are
/// kept in memory up to a limit, beyond which they wait in `unsent_file`.
///
/// A request that fails for a reason that may pass (TransientError) is sent again under the retry policy,
/// with no end unless the policy sets one; any other failure stops the outbox. flush() waits, for at most the
/// flush timeout, until the rows pushed so far are delivered. When the outbox stops without delivering every
/// row (a real failure, a flush that timed out), the rows left are written to `unsent_file`, one per line,
/// and the error that says so (how many, where) is rethrown by push(), flush() and rethrow_if_failed(). A file
/// an earlier run left at `unsent_file` is left alone: this outbox then uses `<stem>.1<ext>` (or the next free
/// number).
class Outbox {
 public:
  using Rows = std::deque<std::string>;
  /// Sends the first rows of `rows` (at least one) in one request, once; returns how many it sent. Throws
  /// TransientError for a failure that may pass; anything else it throws is a real failure.
  using Sender = std::function<std::size_t(const Rows& rows)>;

  struct Settings {
    std::string tracker;                ///< names the tracker in messages ("wandb")
    std::filesystem::path unsent_file;  ///< where rows wait when memory is full, and stay when not sent
    RetryPolicy retry;
    double flush_timeout_s = 60;
    double transmit_interval_s = 0;  ///< rows go at most this often, unless flushed (W&B batches this way)
    std::size_t memory_limit_bytes = std::size_t{4} << 20;
  };

  /// Starts the sending thread. `client` is the one `send` uses: it is interrupted when the outbox gives up,
  /// so that giving up never waits on a hung server.
  Outbox(Settings settings, Sender send, HttpClient& client)
      : settings_(std::move(settings)), send_(std::move(send)), client_(client) {
    settings_.unsent_file = unused_path(settings_.unsent_file);
    next_transmit_ = Clock::now() + seconds(settings_.transmit_interval_s);
    worker_ = std::thread([this] { run(); });
  }

  /// Waits (as flush() does) for the rows pushed so far, unless the outbox has failed, then stops the thread.
  /// A failure the owner has not been told of is one warning, since a destructor does not throw.
  ~Outbox() {
    bool reported = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      reported = reported_;
    }
    try {
      flush();
    } catch (const std::exception& e) {
      if (!reported) log::warning("{}", e.what());
    }
    stop();
  }
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  /// Queues `row`. Over the memory limit, the rows queued since the last spill go to the unsent file. After a
  /// failure, throws it instead.
  void push(std::string row) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rethrow_locked();
      back_bytes_ += row.size();
      back_.push_back(std::move(row));
      ++pushed_;
      if (back_bytes_ > settings_.memory_limit_bytes / 2) spill_locked();
    }
    wake_.notify_all();
  }

  /// Throws the failure, if the outbox has failed.
  void rethrow_if_failed() {
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_locked();
  }

  bool failed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return failure_ != nullptr;
  }

  /// Rows pushed and not delivered yet.
  std::uint64_t unsent() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pushed_ - delivered_;
  }

  /// Sends the rows pushed so far without waiting for the transmit interval, and waits until they are
  /// delivered, saying every few seconds how many are left. Throws the failure if the outbox fails. When the
  /// flush timeout passes first, the outbox gives up: the rows left go to the unsent file, and the error
  /// saying how many and where is thrown (and kept, as a failure).
  void flush() {
    std::unique_lock<std::mutex> lock(mutex_);
    rethrow_locked();
    const std::uint64_t target = pushed_;
    flush_target_ = std::max(flush_target_, target);
    wake_.notify_all();
    const auto start = Clock::now();
    const auto deadline = start + seconds(settings_.flush_timeout_s);
    const auto progress_period = seconds(std::min(10.0, settings_.flush_timeout_s / 4));
    auto next_progress = start + progress_period;
    while (delivered_ < target && !failure_ && Clock::now() < deadline) {
      idle_.wait_until(lock, std::min(deadline, next_progress));
      if (Clock::now() >= next_progress && delivered_ < target && !failure_) {
        log::warning("waiting for {} to send {} rows ({:.0f} s left)", settings_.tracker, target - delivered_,
                     std::max(0.0, std::chrono::duration<double>(deadline - Clock::now()).count()));
        next_progress += progress_period;
      }
    }
    if (delivered_ < target && !failure_) {
      lock.unlock();
      stop();
      lock.lock();
      if (!failure_)
        fail_locked(fmt::format("{}: gave up after {:g} s{}", settings_.tracker, settings_.flush_timeout_s,
                                last_error_.empty() ? "" : " (last error: " + last_error_ + ")"));
    }
    rethrow_locked();
  }

  /// From now on, runs `job` (a keep-alive for the server) every `interval` (periodic) or after `interval`
  /// without any request (when_idle). A TransientError from it is left for the next one; anything else it
  /// throws is a failure of the outbox.
  void set_keep_alive(std::chrono::duration<double> interval, std::function<void()> job, KeepAlive when) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      keep_alive_ = std::move(job);
      keep_alive_interval_ = std::chrono::duration_cast<Clock::duration>(interval);
      keep_alive_when_ = when;
      keep_alive_due_ = Clock::now() + keep_alive_interval_;
    }
    wake_.notify_all();
  }

  /// Stops the keep-alive (a finished run is not kept alive); a keep-alive running now completes.
  void stop_keep_alive() {
    std::unique_lock<std::mutex> lock(mutex_);
    keep_alive_ = nullptr;
    idle_.wait(lock, [this] { return !keep_alive_running_; });
  }

 private:
  using Clock = std::chrono::steady_clock;

  // `path`, or when a file is there (rows an earlier run of this name left), `<stem>.1<ext>`, `<stem>.2<ext>`, ...
  static std::filesystem::path unused_path(const std::filesystem::path& path) {
    std::filesystem::path candidate = path;
    for (int n = 1; std::filesystem::exists(candidate); ++n)
      candidate =
          path.parent_path() / fmt::format("{}.{}{}", path.stem().string(), n, path.extension().string());
    return candidate;
  }

  static Clock::duration seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

  // Throws the failure, which the owner then knows of.
  void rethrow_locked() {
    if (!failure_) return;
    reported_ = true;
    std::rethrow_exception(failure_);
  }

  bool has_rows_locked() const { return !front_.empty() || spilled_rows_ > 0 || !back_.empty(); }

  // Appends the rows of back_ to the unsent file, after those already there (they are older).
  void spill_locked() {
    std::string lines;
    for (const auto& row : back_) lines += row + '\n';
    append_to_file(settings_.unsent_file, lines);
    spilled_rows_ += back_.size();
    back_.clear();
    back_bytes_ = 0;
  }

  // Makes front_ the oldest rows not sent: read from the unsent file (up to half the memory limit), else
  // back_.
  void load_front_locked() {
    if (spilled_rows_ == 0) {
      front_.swap(back_);
      back_bytes_ = 0;
      return;
    }
    std::ifstream in(settings_.unsent_file, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(spilled_offset_));
    std::size_t bytes = 0;
    for (std::string line;
         spilled_rows_ > 0 && bytes <= settings_.memory_limit_bytes / 2 && std::getline(in, line);) {
      bytes += line.size();
      front_.push_back(std::move(line));
      --spilled_rows_;
    }
    if (front_.empty())
      throw Error(fmt::format("{}: cannot read the queued rows back from {}", settings_.tracker,
                              settings_.unsent_file.string()));
    spilled_offset_ = static_cast<std::uint64_t>(in.tellg());
    if (spilled_rows_ == 0) {
      std::error_code ec;
      std::filesystem::remove(settings_.unsent_file, ec);
      spilled_offset_ = 0;
    }
  }

  // Stops the outbox with `message`, writing the rows left to the unsent file (named in the message).
  void fail_locked(std::string message) {
    const std::uint64_t left = pushed_ - delivered_;
    if (left > 0) {
      std::string lines;
      for (const auto& row : front_) lines += row + '\n';
      if (spilled_rows_ > 0) {
        const auto spilled = read_file_if_exists(settings_.unsent_file).value_or("");
        lines += spilled.substr(std::min<std::size_t>(spilled_offset_, spilled.size()));
      }
      for (const auto& row : back_) lines += row + '\n';
      replace_file(settings_.unsent_file, lines);
      message += fmt::format("; {} row{} unsent, kept in {}", left, left == 1 ? "" : "s",
                             settings_.unsent_file.string());
    }
    failure_ = std::make_exception_ptr(Error(message));
    idle_.notify_all();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    client_.interrupt();
    wake_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_ && !failure_) {
      const auto now = Clock::now();
      const bool rows_due = has_rows_locked() && (flush_target_ > delivered_ || now >= next_transmit_);
      const bool beat_due = keep_alive_ && now >= keep_alive_due_;
      if (beat_due && (!rows_due || keep_alive_when_ == KeepAlive::periodic)) {
        keep_alive_locked(lock);
      } else if (rows_due) {
        send_front_locked(lock);
      } else {
        auto until = Clock::time_point::max();
        if (has_rows_locked()) until = next_transmit_;
        if (keep_alive_) until = std::min(until, keep_alive_due_);
        wake_.wait_until(lock, until);
      }
    }
  }

  void keep_alive_locked(std::unique_lock<std::mutex>& lock) {
    const auto job = keep_alive_;  // a copy: stop_keep_alive may clear it while it runs
    keep_alive_running_ = true;
    lock.unlock();
    std::exception_ptr error;
    try {
      job();
    } catch (const TransientError&) {
      // the server is away; the rows' retries find out when it is back
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    keep_alive_running_ = false;
    keep_alive_due_ = Clock::now() + keep_alive_interval_;
    if (error) failure_ = error;
    idle_.notify_all();
  }

  // Sends the oldest rows, retrying them as the policy allows; on a real failure, stops the outbox.
  void send_front_locked(std::unique_lock<std::mutex>& lock) {
    try {
      if (front_.empty()) load_front_locked();
    } catch (const std::exception& e) {
      return fail_locked(e.what());
    }
    lock.unlock();
    std::size_t sent = 0;
    std::string failure;
    try {
      sent = with_retries(
          settings_.retry, std::numeric_limits<double>::infinity(),
          [&] {
            try {
              return send_(front_);
            } catch (const TransientError& e) {
              std::lock_guard<std::mutex> guard(mutex_);
              last_error_ = e.what();
              throw;
            }
          },
          [&](double wait_s) {
            std::unique_lock<std::mutex> waiting(mutex_);
            return !wake_.wait_for(waiting, std::chrono::duration<double>(wait_s),
                                   [this] { return stopping_; });
          });
    } catch (const TransientError&) {
      // stopped while the server was away: flush() or the destructor keeps the rows
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown error";
    }
    lock.lock();
    if (!failure.empty()) return fail_locked(failure);
    front_.erase(front_.begin(), front_.begin() + static_cast<std::ptrdiff_t>(std::min(sent, front_.size())));
    delivered_ += sent;
    const auto now = Clock::now();
    if (front_.empty()) next_transmit_ = now + seconds(settings_.transmit_interval_s);
    if (keep_alive_when_ == KeepAlive::when_idle) keep_alive_due_ = now + keep_alive_interval_;
    idle_.notify_all();
  }

  Settings settings_;
  Sender send_;
  HttpClient& client_;
  std::mutex mutex_;
  std::condition_variable wake_;      // the worker: rows, a flush, a keep-alive change, stopping
  std::condition_variable idle_;      // the owner: rows delivered, a failure, a keep-alive done
  Rows front_;                        // the oldest rows, being sent (only the worker changes it)
  std::uint64_t spilled_rows_ = 0;    // rows in the unsent file after spilled_offset_, younger than front_
  std::uint64_t spilled_offset_ = 0;  // where the first of them starts
  Rows back_;                         // the youngest rows
  std::size_t back_bytes_ = 0;
  std::uint64_t pushed_ = 0;
  std::uint64_t delivered_ = 0;
  std::uint64_t flush_target_ = 0;  // rows to send without waiting for the transmit interval
  Clock::time_point next_transmit_;
  std::string last_error_;
  std::exception_ptr failure_;
  bool reported_ = false;  // the failure has been thrown to the owner
  bool stopping_ = false;
  std::function<void()> keep_alive_;
  Clock::duration keep_alive_interval_{};
  KeepAlive keep_alive_when_ = KeepAlive::when_idle;
  Clock::time_point keep_alive_due_{};
  bool keep_alive_running_ = false;
  std::thread worker_;  // last: started once everything it reads is built
};

}  // namespace torchfit::detail

namespace torchfit::detail {

/// The Outbox settings of a tracker (`tracker`: its report_to name) for run `run` of a training that writes
/// to `output_dir`: rows it could not send are kept in `<output_dir>/.torchfit/unsent/<tracker>-<run>.jsonl`;
/// the flush timeout is `flush_timeout` when set (see flush_timeout_s).
inline Outbox::Settings outbox_settings(const std::string& tracker, const std::string& output_dir,
                                        const std::string& run, const RetryPolicy& retry,
                                        const std::optional<double>& flush_timeout) {
  Outbox::Settings settings;
  settings.tracker = tracker;
  settings.unsent_file =
      std::filesystem::path(output_dir) / ".torchfit" / "unsent" / (tracker + "-" + run + ".jsonl");
  settings.retry = retry;
  settings.flush_timeout_s = flush_timeout_s(flush_timeout);
  return settings;
}

}  // namespace torchfit::detail

namespace torchfit::detail {

/// For an owner's destructor: runs `end` (it queues the rows that end the run) unless `outbox` has failed; an
/// error is one warning, since a destructor does not throw. The outbox's destruction then waits for the rows.
template <typename End>
void end_in_destructor(Outbox& outbox, End end) noexcept {
  if (outbox.failed()) return;
  try {
    end();
  } catch (const std::exception& e) {
    log::warning("{}", e.what());
  }
}

/// A value as an Outbox row: its JSON text on one line (text that is not UTF-8 replaced, so that a bad log
/// value cannot stop the outbox).
inline std::string row_text(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

/// The row of one API call: `{"call": name, "body": body}`.
inline std::string call_row(const std::string& call, const json& body) {
  return row_text({{"call", call}, {"body", body}});
}

/// The Sender of call rows: one request per row, made by `call(name, body)`.
template <typename Call>
Outbox::Sender call_sender(Call call) {
  return [call](const Outbox::Rows& rows) {
    const json row = json::parse(rows.front());
    call(row["call"].get<std::string>(), row["body"]);
    return std::size_t{1};
  };
}

}  // namespace torchfit::detail
