// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include <cmath>

#include "torchfit/loop/loss_window.hpp"

using torchfit::LossWindow;

namespace {
torch::Tensor scalar(double v) { return torch::tensor(static_cast<float>(v)); }
}  // namespace

TEST_CASE("a closed window is the mean step loss since the last log, read once", "[unit][loss_window]") {
  LossWindow window;
  window.start(torch::kCPU, true);
  window.add(scalar(1.0), 0);  // two micro-batches of step 1, each already divided by 2
  window.add(scalar(2.0), 0);
  window.add(scalar(4.0), 1);
  const int64_t reads = torchfit::detail::host_reads();
  CHECK(window.close(2) == Approx(3.5));  // (3 + 4) / 2 steps
  CHECK(torchfit::detail::host_reads() - reads == 1);
  CHECK(window.last_logged() == 2);
  window.add(scalar(6.0), 2);
  CHECK(window.close(3) == Approx(6.0));
  CHECK(window.total() == Approx(13.0));  // every step loss, logged or not
}

TEST_CASE("a non-finite step loss adds the running mean instead, as HF's logging_nan_inf_filter",
          "[unit][loss_window]") {
  LossWindow window;
  window.start(torch::kCPU, true);
  window.add(scalar(2.0), 0);
  window.add(scalar(4.0), 1);
  window.add(scalar(NAN), 2);  // replaced by tr_loss / (1 + global_step - last_logged) = 6 / 3
  window.add(scalar(1.0), 3);
  CHECK(window.close(4) == Approx((2.0 + 4.0 + 2.0 + 1.0) / 4));

  SECTION("without the filter the NaN is logged") {
    LossWindow raw;
    raw.start(torch::kCPU, false);
    raw.add(scalar(2.0), 0);
    raw.add(scalar(INFINITY), 1);
    CHECK(std::isinf(raw.close(2)));
  }
}

TEST_CASE(
    "a window's progress survives a checkpoint: the resumed window logs what the uninterrupted one would",
    "[unit][loss_window]") {
  LossWindow uninterrupted, before, after;
  for (auto* w : {&uninterrupted, &before, &after}) w->start(torch::kCPU, true);
  for (auto* w : {&uninterrupted, &before}) {
    w->add(scalar(1), 0);
    w->add(scalar(2), 1);
    w->close(2);
    w->add(scalar(3), 2);  // step 3, after the log at step 2
  }
  const torchfit::checkpoint::Progress saved = before.progress();
  CHECK(saved.loss_since_last_log == Approx(3.0));
  CHECK(saved.loss_total == Approx(3.0));
  CHECK(saved.last_logged_step == 2);
  after.restore(saved);
  for (auto* w : {&uninterrupted, &after}) {
    w->add(scalar(4), 3);
    w->add(scalar(5), 4);
  }
  CHECK(after.close(5) == Approx(4.0));
  CHECK(uninterrupted.close(5) == Approx(4.0));
  CHECK(after.total() == Approx(15.0));
  CHECK(uninterrupted.total() == Approx(15.0));
}
