// SPDX-License-Identifier: MIT
// The delivery layer the server trackers share: the Outbox (rows in order, retries through an outage, the
// memory limit and its file, the end-of-run wait, keep-alives), and the retry policy each tracker starts
// from.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"
#include "torchfit/integrations/clearml.hpp"
#include "torchfit/integrations/comet.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/mlflow.hpp"
#include "torchfit/integrations/wandb.hpp"

namespace fs = std::filesystem;
using torchfit::RetryPolicy;
using torchfit::detail::HttpClient;
using torchfit::detail::KeepAlive;
using torchfit::detail::Outbox;
using torchfit::detail::TransientError;
using torchfit::test::CaptureLog;
using torchfit::test::eventually;
using torchfit::test::read_file;
using torchfit::test::TempDir;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  for (std::size_t begin = 0, end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1)
    lines.push_back(text.substr(begin, end - begin));
  return lines;
}

std::vector<std::string> numbered_rows(int count, int first = 0) {
  std::vector<std::string> rows;
  for (int i = first; i < first + count; ++i) rows.push_back("row " + std::to_string(i));
  return rows;
}

// An Outbox writing its unsent rows to `<dir>/unsent.jsonl`, retrying fast and without limit, that sends one
// row per request through `attempt(row)` and records the rows delivered.
class TestOutbox {
 public:
  template <typename Attempt>
  TestOutbox(const fs::path& dir, Attempt attempt, double flush_timeout_s = 60,
             std::size_t memory_limit_bytes = std::size_t{1} << 20)
      : file_(dir / "unsent.jsonl") {
    Outbox::Settings settings;
    settings.tracker = "test";
    settings.unsent_file = file_;
    settings.retry = RetryPolicy{0.001, 0.01, 5};
    settings.flush_timeout_s = flush_timeout_s;
    settings.memory_limit_bytes = memory_limit_bytes;
    outbox_.emplace(
        settings,
        [this, attempt](const Outbox::Rows& rows) {
          attempt(rows.front());
          std::lock_guard<std::mutex> lock(mutex_);
          delivered_.push_back(rows.front());
          return std::size_t{1};
        },
        client_);
  }

  Outbox& operator*() { return *outbox_; }
  Outbox* operator->() { return &*outbox_; }
  /// Destroys the outbox (which waits for its rows, as an owner's destruction does).
  void destroy() { outbox_.reset(); }
  std::vector<std::string> delivered() {
    std::lock_guard<std::mutex> lock(mutex_);
    return delivered_;
  }
  const fs::path& file() const { return file_; }

 private:
  fs::path file_;
  HttpClient client_{5, {}};
  std::mutex mutex_;
  std::vector<std::string> delivered_;
  std::optional<Outbox> outbox_;
};

void push_all(Outbox& outbox, const std::vector<std::string>& rows) {
  for (const auto& row : rows) outbox.push(row);
}

}  // namespace

TEST_CASE("Outbox: rows go in order, a real failure stops it and keeps the rows left in the unsent file",
          "[outbox]") {
  TempDir tmp;
  SECTION("order, and flush waits for every row") {
    TestOutbox out(tmp.path(), [](const std::string&) {});
    push_all(*out, numbered_rows(100));
    out->flush();
    CHECK(out.delivered() == numbered_rows(100));
    CHECK(out->unsent() == 0);
    CHECK_FALSE(fs::exists(out.file()));
  }
  SECTION("the first real failure stops the outbox, is thrown to the owner, and the rows left are kept") {
    std::atomic<bool> release{false};
    TestOutbox out(tmp.path(), [&](const std::string& row) {
      while (row == "row 0" && !release) std::this_thread::yield();
      if (row == "row 1") throw std::runtime_error("server gone");
    });
    push_all(*out, numbered_rows(3));
    release = true;
    const std::string failure = "server gone; 2 rows unsent, kept in " + out.file().string();
    CHECK_THROWS_WITH(out->flush(), failure);
    CHECK(out.delivered() == numbered_rows(1));
    CHECK_THROWS_WITH(out->rethrow_if_failed(), failure);
    CHECK_THROWS_WITH(out->push("row 3"), failure);
    CHECK(lines_of(read_file(out.file())) == numbered_rows(2, 1));
  }
  SECTION("rows an earlier run left in the unsent file are left alone") {
    torchfit::test::write_file(tmp / "unsent.jsonl", "an earlier run's row\n");
    TestOutbox out(tmp.path(), [](const std::string& row) {
      if (row == "row 1") throw std::runtime_error("refused");
    });
    push_all(*out, numbered_rows(3));
    CHECK_THROWS_WITH(out->flush(), "refused; 2 rows unsent, kept in " + (tmp / "unsent.1.jsonl").string());
    CHECK(read_file(tmp / "unsent.jsonl") == "an earlier run's row\n");
    CHECK(lines_of(read_file(tmp / "unsent.1.jsonl")) == numbered_rows(2, 1));
  }
  SECTION("destruction waits for the rows pushed") {
    TestOutbox out(tmp.path(),
                   [](const std::string&) { std::this_thread::sleep_for(std::chrono::milliseconds(5)); });
    push_all(*out, numbered_rows(3));
    out.destroy();
    CHECK(out.delivered() == numbered_rows(3));
  }
}

TEST_CASE("Outbox: failures that may pass are retried until the row goes, rows never wait behind the network",
          "[outbox]") {
  TempDir tmp;
  SECTION("an outage: every row delivered in order once the server is back") {
    std::atomic<int> refusals{0};
    std::atomic<bool> back{false};
    TestOutbox out(tmp.path(), [&](const std::string&) {
      if (!back) {
        ++refusals;
        throw TransientError("POST http://tracker", "HTTP 503: unavailable");
      }
    });
    push_all(*out, numbered_rows(20));
    REQUIRE(eventually([&] { return refusals >= 5; }));
    CHECK(out.delivered().empty());
    CHECK(out->unsent() == 20);
    back = true;
    out->flush();
    CHECK(out.delivered() == numbered_rows(20));
  }
  SECTION("push returns at once while a request hangs") {
    std::atomic<bool> hanging{false}, release{false};
    TestOutbox out(tmp.path(), [&](const std::string&) {
      hanging = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    out->push("row 0");
    REQUIRE(eventually([&] { return hanging.load(); }));
    double slowest_s = 0;
    for (const auto& row : numbered_rows(1000, 1)) {
      const auto start = std::chrono::steady_clock::now();
      out->push(row);
      slowest_s = std::max(slowest_s,
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    INFO("slowest push: " << slowest_s << " s");
    CHECK(slowest_s < 1);  // a push waiting for the network would wait until the release below
    CHECK(out.delivered().empty());
    release = true;
    out->flush();
    CHECK(out.delivered() == numbered_rows(1001));
  }
  SECTION("over the memory limit rows wait in the file, and still go in order") {
    std::atomic<bool> release{false};
    TestOutbox out(
        tmp.path(),
        [&](const std::string&) {
          while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        },
        60, /*memory_limit_bytes=*/64);
    push_all(*out, numbered_rows(200));
    CHECK(fs::exists(out.file()));
    const auto waiting = lines_of(read_file(out.file()));
    CHECK(waiting.size() >= 150);  // at most 64 bytes of rows stay in memory
    release = true;
    out->flush();
    CHECK(out.delivered() == numbered_rows(200));
    CHECK_FALSE(fs::exists(out.file()));  // emptied: removed
  }
  SECTION("a retry limit, when the policy sets one, makes a lasting failure a real one") {
    RetryPolicy policy{0.001, 0.01, 5, 2};
    int attempts = 0;
    CHECK_THROWS_WITH(torchfit::detail::with_retries(policy, 60,
                                                     [&]() -> int {
                                                       ++attempts;
                                                       throw TransientError("GET http://x", "HTTP 503: busy");
                                                     }),
                      Catch::StartsWith("GET http://x failed after 3 attempts in ") &&
                          Catch::EndsWith(" s: HTTP 503: busy"));
    CHECK(attempts == 3);
  }
}

TEST_CASE(
    "Outbox: at the end it waits a bounded time, saying how many rows are left, then keeps them in a file",
    "[outbox]") {
  TempDir tmp;
  std::atomic<bool> back{false};
  TestOutbox out(
      tmp.path(),
      [&](const std::string&) {
        if (!back) throw TransientError("POST http://tracker/rows", "HTTP 503: down for maintenance");
      },
      /*flush_timeout_s=*/0.4);
  push_all(*out, numbered_rows(7));
  CaptureLog log;
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(out->flush(),
                    "test: gave up after 0.4 s (last error: POST http://tracker/rows: HTTP 503: down "
                    "for maintenance); 7 rows unsent, kept in " +
                        out.file().string());
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(waited_s >= 0.4);
  CHECK(waited_s < 10);
  CHECK(lines_of(read_file(out.file())) == numbered_rows(7));
  // Progress every quarter of the timeout (at most every 10 s): how many rows, how long is left.
  const std::string text = log.text();
  INFO(text);
  CHECK(text.rfind("[torchfit] warning: waiting for test to send 7 rows (0 s left)\n", 0) == 0);
  // Given up: a server that comes back gets nothing more, and the destruction says nothing more.
  back = true;
  out.destroy();
  CHECK(out.delivered().empty());
  CHECK(log.text() == text);
}

TEST_CASE("Outbox: keep-alives when idle or periodically, their real failures are the outbox's", "[outbox]") {
  TempDir tmp;
  SECTION("a when_idle keep-alive runs when nothing else does, and its failure is the outbox's") {
    TestOutbox out(tmp.path(), [](const std::string&) {});
    std::atomic<int> keep_alives{0};
    out->set_keep_alive(
        std::chrono::milliseconds(1),
        [&] {
          if (++keep_alives == 3) throw std::runtime_error("no heartbeat answer");
        },
        KeepAlive::when_idle);
    CHECK(eventually([&] { return out->failed(); }));
    CHECK(keep_alives == 3);
    CHECK_THROWS_WITH(out->flush(), "no heartbeat answer");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(keep_alives == 3);  // a failed outbox runs nothing more
  }
  SECTION("a keep-alive that fails for a reason that may pass is left for the next one") {
    TestOutbox out(tmp.path(), [](const std::string&) {});
    std::atomic<int> keep_alives{0};
    out->set_keep_alive(
        std::chrono::milliseconds(1),
        [&] {
          ++keep_alives;
          throw TransientError("GET http://tracker/ping", "Couldn't connect to server");
        },
        KeepAlive::when_idle);
    CHECK(eventually([&] { return keep_alives >= 5; }));
    CHECK_FALSE(out->failed());
  }
  SECTION("a periodic keep-alive also runs between rows once due, and stops when told") {
    std::mutex mutex;
    std::vector<std::string> order;  // rows, and "beat" for a keep-alive
    const auto record = [&](const std::string& what) {
      std::lock_guard<std::mutex> lock(mutex);
      order.push_back(what);
    };
    const auto recorded = [&] {
      std::lock_guard<std::mutex> lock(mutex);
      return order;
    };
    std::atomic<bool> started{false}, release{false};
    TestOutbox out(tmp.path(), [&](const std::string& row) {
      started = true;
      while (row == "row 0" && !release) std::this_thread::yield();
      record(row);
    });
    out->push("row 0");
    REQUIRE(eventually([&] { return started.load(); }));
    out->set_keep_alive(
        std::chrono::milliseconds(20), [&] { record("beat"); }, KeepAlive::periodic);
    out->push("row 1");
    std::this_thread::sleep_for(std::chrono::milliseconds(40));  // the keep-alive falls due during row 0
    release = true;
    out->flush();
    out->stop_keep_alive();
    const auto at_stop = recorded();
    REQUIRE(at_stop.size() >= 3);
    CHECK(std::vector<std::string>(at_stop.begin(), at_stop.begin() + 3) ==
          std::vector<std::string>{"row 0", "beat", "row 1"});
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    CHECK(recorded().size() == at_stop.size());
  }
}

TEST_CASE("the trackers' default retry policies keep retrying through a five-minute outage", "[outbox]") {
  const std::vector<std::pair<std::string, RetryPolicy>> defaults{
      {"wandb", torchfit::WandbOptions{}.retry},
      {"comet_ml", torchfit::CometOptions{}.retry},
      {"clearml", torchfit::ClearMLOptions{}.retry},
      {"mlflow", torchfit::MLflowOptions{}.retry}};
  for (const auto& [tracker, policy] : defaults) {
    INFO(tracker);
    // Each attempt fails at once (the worst case for the number of attempts): the schedule is the back-offs.
    double elapsed_s = 0;
    int attempts = 1;
    while (elapsed_s < 300) {
      const double wait_s = policy.backoff_s(attempts - 1);
      REQUIRE(policy.allows_retry(attempts, elapsed_s + wait_s));
      elapsed_s += wait_s;
      ++attempts;
    }
    CHECK(policy.allows_retry(100000, 7 * 24 * 3600.0));  // no limit: as long as the run lasts
    CHECK(!policy.max_retries);
    CHECK(!policy.total_timeout_s);
  }
  // wandb-core's file_stream waits: 2 s doubling, at most 60 s.
  const RetryPolicy wandb = torchfit::WandbOptions{}.retry;
  std::vector<double> waits;
  for (int n = 0; n < 7; ++n) waits.push_back(wandb.backoff_s(n));
  CHECK(waits == std::vector<double>{2, 4, 8, 16, 32, 60, 60});
  CHECK(wandb.request_timeout_s == 180);
  // MLflow's client: back-off factor 2, at most 120 s, 120 s per attempt.
  const RetryPolicy mlflow = torchfit::MLflowOptions{}.retry;
  CHECK(mlflow.backoff_s(0) == 2);
  CHECK(mlflow.backoff_s(10) == 120);
  CHECK(mlflow.request_timeout_s == 120);
}

TEST_CASE(
    "the end-of-run wait comes from the tracker's option, else TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60 s",
    "[outbox]") {
  torchfit::test::ScopedEnv unset("TORCHFIT_TRACKER_FLUSH_TIMEOUT", std::nullopt);
  CHECK(torchfit::detail::flush_timeout_s(std::nullopt) == 60);
  CHECK(torchfit::detail::flush_timeout_s(5.0) == 5);
  torchfit::test::ScopedEnv set("TORCHFIT_TRACKER_FLUSH_TIMEOUT", "300");
  CHECK(torchfit::detail::flush_timeout_s(std::nullopt) == 300);
  CHECK(torchfit::detail::flush_timeout_s(5.0) == 5);
  const auto settings =
      torchfit::detail::outbox_settings("wandb", "/out", "abc1", RetryPolicy{}, std::nullopt);
  CHECK(settings.unsent_file == fs::path("/out/.torchfit/unsent/wandb-abc1.jsonl"));
  CHECK(settings.flush_timeout_s == 300);
}
