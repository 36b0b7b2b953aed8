// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/detail/memory_tracker.hpp"

using torchfit::Logs;
using torchfit::detail::MemoryTracker;

TEST_CASE("memory metrics name each stage as HF does, init's with the first stage reported",
          "[unit][memory_tracker]") {
  MemoryTracker tracker(true);
  tracker.start("init", torch::kCPU);
  tracker.stop("init");
  tracker.start("train", torch::kCPU);
  tracker.start("eval", torch::kCPU);                 // nested in train: ignored, as HF
  const torch::Tensor held = torch::ones({4 << 20});  // 16 MiB still allocated at the end of the stage
  Logs nested = Logs::object();
  tracker.stop_and_update_metrics("eval", nested);
  CHECK(nested.empty());
  Logs metrics = Logs::object();
  tracker.stop_and_update_metrics("train", metrics);
  for (const char* key : {"init_mem_cpu_alloc_delta", "train_mem_cpu_alloc_delta", "before_init_mem_cpu"})
    CHECK(metrics.contains(key));
  CHECK(metrics.at("train_mem_cpu_alloc_delta").get<int64_t>() >= (16 << 20) - (1 << 20));
  CHECK(held.numel() == 4 << 20);

  tracker.start("eval", torch::kCPU);
  Logs eval = Logs::object();
  tracker.stop_and_update_metrics("eval", eval);
  CHECK(eval.contains("eval_mem_cpu_alloc_delta"));
  CHECK_FALSE(eval.contains("init_mem_cpu_alloc_delta"));  // reported once
}

TEST_CASE("a disabled tracker adds nothing", "[unit][memory_tracker]") {
  MemoryTracker tracker(false);
  tracker.start("train", torch::kCPU);
  Logs metrics = Logs::object();
  tracker.stop_and_update_metrics("train", metrics);
  CHECK(metrics.empty());
}
