// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include <sstream>

#include "torchfit/loop/token_counter.hpp"

using namespace torchfit;
using torchfit::detail::host_reads;

TEST_CASE("tokens are counted as HF's include_num_input_tokens_seen says", "[unit][token_counter]") {
  const torch::Tensor inputs = torch::tensor({{5, 6, 0}, {7, 0, 0}});
  TrainingArguments args;
  TokenCounter counter;
  int64_t seen = 10;

  SECTION("no counting") {
    counter.start(args, std::nullopt, torch::kCPU, seen);
    counter.count(inputs, seen);
    CHECK(seen == 10);
    CHECK(counter.session_tokens() == 0);
  }
  SECTION("all elements, known on the host") {
    args.include_num_input_tokens_seen = TokenCounting::all;
    counter.start(args, std::nullopt, torch::kCPU, seen);
    const int64_t reads = host_reads();
    counter.count(inputs, seen);
    counter.count(inputs, seen);
    CHECK(seen == 22);
    CHECK(counter.session_tokens() == 12);
    CHECK(counter.seen_at_start() == 10);
    CHECK(host_reads() == reads);
  }
  SECTION("non-padding elements, summed on the device and read on flush") {
    args.include_num_input_tokens_seen = TokenCounting::non_padding;
    counter.start(args, 0, torch::kCPU, seen);
    const int64_t reads = host_reads();
    counter.count(inputs, seen);
    counter.count(inputs, seen);
    CHECK(seen == 10);
    CHECK(host_reads() == reads);
    counter.flush(seen);
    CHECK(seen == 16);
    CHECK(host_reads() == reads + 1);
    counter.flush(seen);
    CHECK(seen == 16);
  }
  SECTION("non-padding without a padding value counts everything, with a warning") {
    args.include_num_input_tokens_seen = TokenCounting::non_padding;
    std::ostringstream out;
    std::ostream* previous = log::set_stream(&out);
    counter.start(args, std::nullopt, torch::kCPU, seen);
    log::set_stream(previous);
    CHECK(out.str() ==
          "[torchfit] warning: --include_num_input_tokens_seen non_padding: no padding value was given "
          "(Trainer::set_pad_token_id); counting every input element\n");
    counter.count(inputs, seen);
    CHECK(seen == 16);
  }
  SECTION("the rate alone counts this call's tokens without touching the state's count") {
    args.include_tokens_per_second = true;
    counter.start(args, std::nullopt, torch::kCPU, seen);
    counter.count(inputs, seen);
    CHECK(seen == 10);
    CHECK(counter.session_tokens() == 6);
  }
}
