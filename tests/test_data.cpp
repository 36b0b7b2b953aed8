// SPDX-License-Identifier: MIT
// Data in: TensorDict batches, collators, datasets from files (.npy, safetensors, token files, text, CSV),
// streams, data-loading workers, and the Trainer training from each.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <torchfit/data/csv_dataset.hpp>
#include <torchfit/torchfit.hpp>

#include "../examples/char_gpt/gpt.hpp"
#include "support.hpp"

using namespace torchfit;
using Catch::Contains;  // substring matcher in Catch2 v2 and tests/catch2_compat (v3)

namespace {

torch::Tensor ids(std::vector<int64_t> values) { return torch::tensor(values, torch::kLong); }

/// Everything a function throws, as text ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

/// This process's resident memory (VmRSS).
int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

/// A map-style dataset of TensorDicts whose sample i is {"x": [i, i], "y": i}.
struct CountingDataset : torch::data::datasets::Dataset<CountingDataset, TensorDict> {
  explicit CountingDataset(int64_t n) : n_(n) {}
  TensorDict get(std::size_t i) override {
    const auto v = static_cast<float>(i);
    return {{"x", torch::full({2}, v)}, {"y", torch::tensor(static_cast<int64_t>(i))}};
  }
  c10::optional<std::size_t> size() const override { return static_cast<std::size_t>(n_); }
  int64_t n_;
};

/// A stream of {"x": [i]} for i in [0, length) per pass, plus `pass * 1000`, counting what it builds.
struct CountingStream {
  int64_t length;
  bool seekable;
  std::shared_ptr<std::atomic<int64_t>> built = std::make_shared<std::atomic<int64_t>>(0);

  StreamingDataset<TensorDict> dataset(int64_t rank = 0, int64_t world_size = 1) const {
    return StreamingDataset<TensorDict>(
        [*this](int64_t pass) {
          auto position = std::make_shared<int64_t>(0);
          StreamingDataset<TensorDict>::Pass p;
          p.next = [=]() -> std::optional<TensorDict> {
            if (*position >= length) return std::nullopt;
            ++*built;
            return TensorDict{{"x", torch::full({1}, static_cast<float>(pass * 1000 + (*position)++))}};
          };
          if (seekable)
            p.skip = [=](int64_t n) {
              const int64_t passed = std::min(n, length - *position);
              *position += passed;
              return passed;
            };
          return p;
        },
        rank, world_size);
  }
};

}  // namespace

// ---- TensorDict ----

TEST_CASE("a TensorDict keeps insertion order and names a missing key", "[data][tensordict]") {
  TensorDict d{{"b", torch::ones({1})}, {"a", torch::zeros({1})}};
  d["c"] = torch::full({1}, 2.0);
  CHECK(d.keys() == std::vector<std::string>{"b", "a", "c"});
  CHECK(d.at("c").item<float>() == 2.0f);
  CHECK_THAT(error_of([&] { d.at("labels"); }), Contains("no key \"labels\"") && Contains("keys: b, a, c"));
  CHECK_THAT(error_of([&] { d.insert("a", torch::ones({1})); }), Contains("\"a\" is already present"));
  CHECK(d.erase("a"));
  CHECK_FALSE(d.contains("a"));
}

TEST_CASE("batch helpers find labels, inputs and the batch size of a TensorDict", "[data][tensordict]") {
  const TensorDict batch{{"input_ids", torch::zeros({3, 5}, torch::kLong)},
                         {"label", ids({1, 0, 2})},
                         {"start_positions", ids({1, 2, 3})},
                         {"end_positions", ids({4, 5, 6})}};
  CHECK(torchfit::detail::batch_size_of(batch) == 3);
  CHECK(torchfit::detail::input_of(batch).sizes() == c10::IntArrayRef{3, 5});
  CHECK(
      torch::equal(torchfit::detail::labels_of(batch), ids({1, 0, 2})));  // default names: labels, then label
  CHECK(torch::equal(torchfit::detail::labels_of(batch, {"end_positions"}), ids({4, 5, 6})));
  // Several label names: stacked along a new last dimension (HF gives a tuple).
  CHECK(torch::equal(torchfit::detail::labels_of(batch, {"start_positions", "end_positions"}),
                     torch::stack({ids({1, 2, 3}), ids({4, 5, 6})}, -1)));
  CHECK_FALSE(torchfit::detail::labels_of(batch, {"start_positions", "missing"}).defined());
  CHECK_FALSE(torchfit::detail::labels_of(TensorDict{{"input_ids", torch::zeros({2, 2})}}).defined());
}

// ---- collators ----

TEST_CASE("StackCollator stacks equal shapes and points to padding for unequal ones", "[data][collator]") {
  const TensorDict batch = StackCollator{}(
      {{{"x", torch::ones({2})}, {"y", ids({1})[0]}}, {{"y", ids({2})[0]}, {"x", torch::zeros({2})}}});
  CHECK(batch.keys() == std::vector<std::string>{"x", "y"});
  CHECK(torch::equal(batch.at("y"), ids({1, 2})));
  CHECK_THAT(error_of([] {
               StackCollator{}({{{"x", torch::ones({2})}}, {{"x", torch::ones({3})}}});
             }),
             Contains("key \"x\" has shape [3] in example 1") && Contains("PaddingCollator"));
  CHECK_THAT(error_of([] {
               StackCollator{}({{{"x", torch::ones({2})}}, {{"z", torch::ones({2})}}});
             }),
             Contains("example 1 of the batch has no key \"x\""));
}

TEST_CASE("PaddingCollator pads to the longest (or a multiple), masks and labels with -100",
          "[data][collator]") {
  std::vector<TensorDict> examples = {
      {{"input_ids", ids({5, 6, 7})}, {"labels", ids({1, 2, 3})}, {"label", ids({4})[0]}},
      {{"input_ids", ids({8})}, {"labels", ids({9})}, {"label", ids({0})[0]}}};
  SECTION("to the longest") {
    const TensorDict batch = PaddingCollator(/*pad_token=*/99)(examples);
    CHECK(batch.keys() == std::vector<std::string>{"input_ids", "labels", "label", "attention_mask"});
    CHECK(
        torch::equal(batch.at("input_ids"), torch::tensor({5, 6, 7, 8, 99, 99}, torch::kLong).view({2, 3})));
    CHECK(
        torch::equal(batch.at("labels"), torch::tensor({1, 2, 3, 9, -100, -100}, torch::kLong).view({2, 3})));
    CHECK(torch::equal(batch.at("attention_mask"),
                       torch::tensor({1, 1, 1, 1, 0, 0}, torch::kLong).view({2, 3})));
    CHECK(torch::equal(batch.at("label"), ids({4, 0})));  // scalars are stacked
  }
  SECTION("to a multiple of 4") {
    const TensorDict batch = PaddingCollator(0, 4)(examples);
    CHECK(batch.at("input_ids").sizes() == c10::IntArrayRef{2, 4});
    CHECK(batch.at("attention_mask").sum().item<int64_t>() == 4);
  }
  SECTION("a given attention mask is padded with 0, not recomputed") {
    examples[0].insert("attention_mask", ids({0, 1, 1}));
    examples[1].insert("attention_mask", ids({1}));
    CHECK(torch::equal(PaddingCollator()(examples).at("attention_mask"),
                       torch::tensor({0, 1, 1, 1, 0, 0}, torch::kLong).view({2, 3})));
  }
  CHECK_THAT(error_of([] {
               PaddingCollator()({{{"x", torch::zeros({2, 3})}}, {{"x", torch::zeros({2, 4})}}});
             }),
             Contains("only dimension 0 (the sequence) may differ"));
}

TEST_CASE("LanguageModelingCollator copies input_ids to labels, -100 on padding, optionally shifted",
          "[data][collator]") {
  // A real token equal to the pad id (3) keeps its label: padding is found by position.
  const std::vector<TensorDict> examples = {{{"input_ids", ids({1, 2, 3})}}, {{"input_ids", ids({4})}}};
  const TensorDict plain = LanguageModelingCollator(/*pad_token=*/3)(examples);
  CHECK(torch::equal(plain.at("input_ids"), torch::tensor({1, 2, 3, 4, 3, 3}, torch::kLong).view({2, 3})));
  CHECK(torch::equal(plain.at("labels"), torch::tensor({1, 2, 3, 4, -100, -100}, torch::kLong).view({2, 3})));
  const TensorDict shifted = LanguageModelingCollator(3, std::nullopt, /*shift=*/true)(examples);
  CHECK(torch::equal(shifted.at("labels"),
                     torch::tensor({2, 3, -100, -100, -100, -100}, torch::kLong).view({2, 3})));
}

// ---- batching and workers ----

TEST_CASE("map-style TensorDict datasets are stacked or collated by index", "[data][plan]") {
  const CountingDataset data(5);
  torchfit::detail::BatchPlan<CountingDataset> plan(data, 2, false, std::nullopt);
  REQUIRE(plan.num_batches() == 3);
  const TensorDict last = plan.batch(2);
  CHECK(torch::equal(last.at("y"), ids({4})));
  CHECK(last.at("x").sizes() == c10::IntArrayRef{1, 2});

  const Collated collated(CountingDataset(5), [](std::vector<TensorDict> examples) {
    TensorDict batch = StackCollator{}(std::move(examples));
    batch["y"] = batch.at("y") * 10;
    return batch;
  });
  torchfit::detail::BatchPlan<Collated<CountingDataset>> collated_plan(collated, 2, false, std::nullopt);
  CHECK(torch::equal(collated_plan.batch(1).at("y"), ids({20, 30})));

  const TensorDictDataset columns{{"x", torch::arange(10).view({5, 2})}, {"labels", torch::arange(5)}};
  torchfit::detail::BatchPlan<TensorDictDataset> column_plan(columns, 2, true, std::nullopt);
  CHECK(column_plan.num_batches() == 2);
  CHECK(torch::equal(column_plan.batch(1).at("labels"), ids({2, 3})));
  CHECK_THAT(error_of([] {
               TensorDictDataset{{"x", torch::zeros({3})}, {"y", torch::zeros({4})}};
             }),
             Contains("column \"y\" has 4 samples but column \"x\" has 3"));
}

TEST_CASE(
    "a batch of tensor rows is a copy: consecutive rows by memcpy, others gathered, bad indices refused",
    "[data][plan]") {
  const torch::Tensor column = torch::arange(24, torch::kFloat).view({6, 2, 2});
  const torch::Tensor consecutive = torchfit::detail::take_rows(column, ids({2, 3, 4}));
  CHECK(torch::equal(consecutive, column.index_select(0, ids({2, 3, 4}))));
  consecutive.fill_(-1);  // a loss function writing into its batch
  CHECK(torch::equal(column, torch::arange(24, torch::kFloat).view({6, 2, 2})));

  CHECK(torch::equal(torchfit::detail::take_rows(column, ids({4, 1, 5})),
                     column.index_select(0, ids({4, 1, 5}))));
  const torch::Tensor transposed = column.transpose(0, 1).contiguous().transpose(0, 1);  // not contiguous
  CHECK(torch::equal(torchfit::detail::take_rows(transposed, ids({1, 2})), column.slice(0, 1, 3)));
  const torch::Tensor offset = column.slice(0, 2);  // a view starting at row 2
  CHECK(torch::equal(torchfit::detail::take_rows(offset, ids({1, 2})), column.slice(0, 3, 5)));
  CHECK(torchfit::detail::take_rows(column, ids({})).sizes() == c10::IntArrayRef{0, 2, 2});
  CHECK_THROWS(torchfit::detail::take_rows(column, ids({5, 6})));  // past the end: index_select's error
  CHECK_THROWS(torchfit::detail::take_rows(column, ids({-1, 0})));
}

TEST_CASE("workers build the same batches in the same order and report errors at their batch",
          "[data][workers]") {
  struct SlowOnSome : torch::data::datasets::Dataset<SlowOnSome, TensorDict> {
    explicit SlowOnSome(int64_t unreadable_sample) : unreadable(unreadable_sample) {}
    TensorDict get(std::size_t i) override {
      // Early samples finish last, so a worker racing ahead must still hand out batches in order.
      std::this_thread::sleep_for(std::chrono::microseconds(i < 8 ? 2000 : 0));
      if (static_cast<int64_t>(i) == unreadable) throw Error(fmt::format("sample {} is unreadable", i));
      return {{"x", torch::rand({3}, at::detail::createCPUGenerator(i))}};
    }
    c10::optional<std::size_t> size() const override { return 40; }
    int64_t unreadable;
  };
  const SlowOnSome data(-1);
  const auto read = [&](int64_t first, int64_t workers) {
    torchfit::detail::BatchPrefetcher<SlowOnSome> prefetcher(data, 4, false, 7, first, workers);
    std::vector<torch::Tensor> out;
    for (int64_t k = first; k < 9; ++k) out.push_back(prefetcher.next().at("x"));
    return out;
  };
  const auto reference = read(0, 0);
  for (const int64_t workers : {1, 2, 4}) {
    const auto batches = read(0, workers);
    for (std::size_t k = 0; k < reference.size(); ++k) CHECK(torch::equal(batches[k], reference[k]));
    CHECK(torch::equal(read(3, workers).front(), reference[3]));
  }
  // Sample 37 is in the batch holding position 37 of the shuffled order; reading the whole plan with 3 workers
  // fails at exactly that batch, having handed out every batch before it.
  const auto order = torch::randperm(40, at::detail::createCPUGenerator(7), torch::kLong);
  const int64_t bad_batch = torch::nonzero(order == 37).item<int64_t>() / 4;
  const SlowOnSome failing(37);
  torchfit::detail::BatchPrefetcher<SlowOnSome> prefetcher(failing, 4, false, 7, 0, 3);
  for (int64_t k = 0; k < bad_batch; ++k) CHECK_NOTHROW(prefetcher.next());
  CHECK_THROWS_WITH(prefetcher.next(), "sample 37 is unreadable");
}

// ---- streams ----

TEST_CASE("a stream resumes at exactly the consumed samples, across passes and shards", "[data][stream]") {
  for (const bool seekable : {false, true}) {
    for (const int64_t world_size : {1, 3}) {
      CAPTURE(seekable, world_size);
      const CountingStream source{/*length=*/10, seekable};
      const int64_t rank = world_size - 1;
      const auto data = source.dataset(rank, world_size);
      // Batches of 4 over passes of this shard's samples (10 / world_size per pass), read from the start...
      const auto read = [&](int64_t first, int64_t count, int64_t workers) {
        torchfit::detail::BatchPrefetcher<StreamingDataset<TensorDict>> batches(data, 4, false, std::nullopt,
                                                                                first, workers);
        std::vector<float> values;
        for (int64_t k = 0; k < count; ++k) {
          const auto x = batches.next().at("x").view({-1});
          values.insert(values.end(), x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
        }
        return values;
      };
      const auto all = read(0, 7, 0);
      // ... hold this shard's samples of pass 0, 1, 2, ... in order.
      std::vector<float> expected;
      for (int64_t pass = 0; static_cast<int64_t>(expected.size()) < 28; ++pass)
        for (int64_t i = rank; i < 10 && static_cast<int64_t>(expected.size()) < 28; i += world_size)
          expected.push_back(static_cast<float>(pass * 1000 + i));
      CHECK(all == expected);
      // Resuming at batch 5 gives batches 5 and 6, with or without workers.
      const std::vector<float> tail(all.begin() + 20, all.end());
      CHECK(read(5, 2, 0) == tail);
      CHECK(read(5, 2, 2) == tail);
    }
  }
  SECTION("a seekable stream skips without building the skipped samples") {
    const CountingStream source{10, true};
    const auto data = source.dataset();
    torchfit::detail::BatchPrefetcher<StreamingDataset<TensorDict>> batches(data, 4, false, std::nullopt, 6,
                                                                            0);
    CHECK(batches.next().at("x").view({-1})[0].item<float>() == 2004.0f);  // sample 24 = pass 2, position 4
    CHECK(*source.built == 4);
  }
  SECTION("a stream without samples is refused") {
    const auto empty = CountingStream{0, false}.dataset();
    torchfit::detail::BatchPrefetcher<StreamingDataset<TensorDict>> batches(empty, 2, false, std::nullopt, 0,
                                                                            0);
    CHECK_THROWS_WITH(batches.next(), Contains("no sample for rank 0 of 1 in pass 0"));
    CHECK_THAT(error_of([] {
                 CountingStream{4, false}.dataset(3, 3);
               }),
               Contains("rank 3 is not one of world_size 3"));
  }
}

// ---- files ----

TEST_CASE("open_npy maps NumPy's arrays and refuses what it cannot read in place", "[data][npy]") {
  const auto npy = [](const std::string& name) { return test::data_path("npy/" + name); };
  CHECK(torch::equal(open_npy(npy("float32_2x3.npy")), torch::arange(6, torch::kFloat).view({2, 3}) / 4));
  CHECK(torch::equal(open_npy(npy("int64_4.npy")), ids({-3, 0, 7, int64_t{1} << 40})));
  CHECK(torch::equal(open_npy(npy("uint8_3x2.npy")),
                     torch::tensor({0, 1, 128, 255, 7, 9}, torch::kByte).view({3, 2})));
  CHECK(torch::equal(open_npy(npy("bool_3.npy")), torch::tensor({true, false, true})));
  CHECK(open_npy(npy("float64_scalar.npy")).item<double>() == 2.5);
  CHECK(open_npy(npy("float64_scalar.npy")).dim() == 0);
  CHECK(torch::equal(open_npy(npy("float16_2.npy")), torch::tensor({1.5, -2.0}, torch::kHalf)));
  CHECK(torch::equal(open_npy(npy("int32_v2.npy")), torch::arange(5, torch::kInt)));
  CHECK(open_npy(npy("empty_0x3.npy")).sizes() == c10::IntArrayRef{0, 3});

  CHECK_THROWS_WITH(open_npy(npy("fortran.npy")),
                    Contains("fortran.npy") && Contains("Fortran (column-major) order"));
  CHECK_THROWS_WITH(open_npy(npy("big_endian.npy")),
                    Contains("big_endian.npy") && Contains("'>i4'") && Contains("big-endian"));
  CHECK_THROWS_WITH(open_npy(npy("uint16.npy")), Contains("'<u2'") && Contains("no such type"));
  CHECK_THROWS_WITH(open_npy(npy("structured.npy")), Contains("structured arrays are not supported"));
  CHECK_THROWS_WITH(open_npy(npy("complex.npy")), Contains("'<c8'"));

  test::TempDir dir;
  const std::string good = test::read_file(npy("float32_2x3.npy"));
  test::write_file(dir / "truncated.npy", good.substr(0, good.size() - 3));
  CHECK_THROWS_WITH(open_npy(dir / "truncated.npy"),
                    Contains("needs 24 data bytes but the file has 21 (truncated?)"));
  test::write_file(dir / "text.npy", "not an array");
  CHECK_THROWS_WITH(open_npy(dir / "text.npy"),
                    Contains("text.npy is not a valid .npy file") && Contains("\\x93NUMPY"));
  std::string bad_header = good;
  bad_header.replace(bad_header.find("'shape'"), 7, "'shapf'");
  test::write_file(dir / "bad_key.npy", bad_header);
  CHECK_THROWS_WITH(open_npy(dir / "bad_key.npy"), Contains("the header has no 'shape'"));
  CHECK_THROWS_WITH(open_npy(dir / "missing.npy"), Contains("cannot open") && Contains("missing.npy"));
}

TEST_CASE("a memory-mapped dataset larger than memory batches without reading the file", "[data][npy]") {
  // A sparse 64 GiB float32 array (more than this machine's memory): only the rows a batch selects are read.
  test::TempDir dir;
  const int64_t rows = int64_t{1} << 24, features = 1024;
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(features) + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ').push_back('\n');
  std::string prefix("\x93NUMPY\x01\x00", 8);
  prefix.push_back(static_cast<char>(header.size() & 0xFF));
  prefix.push_back(static_cast<char>(header.size() >> 8));
  test::write_file(dir / "huge.npy", prefix + header);
  REQUIRE(::truncate((dir / "huge.npy").c_str(),
                     static_cast<off_t>(prefix.size() + header.size()) + rows * features * 4) == 0);

  const int64_t resident_before = resident_bytes();
  const TensorDictDataset data{{"inputs", open_npy(dir / "huge.npy")},
                               {"labels", torch::zeros({rows}, torch::kByte)}};
  torchfit::detail::BatchPlan<TensorDictDataset> plan(data, 32, false, 3);
  CHECK(plan.num_batches() == rows / 32);
  for (int64_t k = 0; k < 100; ++k)
    CHECK(torch::equal(plan.batch(k).at("inputs"), torch::zeros({32, features})));
  // The shuffled order (8 bytes a sample) and the labels are in memory; the 64 GiB of inputs are not.
  CHECK(resident_bytes() - resident_before < (int64_t{1} << 30));
}

TEST_CASE("open_safetensors maps every tensor of a safetensors file", "[data][safetensors]") {
  test::TempDir dir;
  const auto inputs = torch::randn({6, 3});
  const auto labels = torch::arange(6);
  torchfit::detail::save_safetensors(dir / "train.safetensors", {{"inputs", inputs}, {"labels", labels}});
  const TensorDict tensors = open_safetensors(dir / "train.safetensors");
  CHECK(torch::equal(tensors.at("inputs"), inputs));
  CHECK(torch::equal(tensors.at("labels"), labels));
  const TensorDictDataset data(tensors);
  CHECK(data.size() == 6);
  test::write_file(dir / "bad.safetensors", "\x08\0\0\0\0\0\0\0{\"a\":1} ");
  CHECK_THROWS_WITH(open_safetensors(dir / "bad.safetensors"),
                    Contains("bad.safetensors is not a valid safetensors file"));
}

TEST_CASE("a token file is cut into shifted windows, as nanoGPT's train.bin", "[data][tokens]") {
  test::TempDir dir;
  write_token_file(dir / "train.bin",
                   torch::arange(0, 11) * 6000);  // ids above 32767 check the unsigned read
  const TokenFileDataset data(dir / "train.bin", 4);
  REQUIRE(data.num_tokens() == 11);
  REQUIRE(data.size() == 2u);  // windows start at 0 and 4; the one at 8 would need token 12
  TensorDict second = const_cast<TokenFileDataset&>(data).get(1);
  CHECK(torch::equal(second.at("input_ids"), ids({24000, 30000, 36000, 42000})));
  CHECK(torch::equal(second.at("labels"), ids({30000, 36000, 42000, 48000})));

  write_token_file(dir / "wide.bin", ids({70000, 1, 2, 3}), TokenWidth::uint32);
  TokenFileDataset wide(dir / "wide.bin", 2, TokenWidth::uint32, /*stride=*/1);
  CHECK(wide.size() == 2u);
  CHECK(torch::equal(wide.get(0).at("input_ids"), ids({70000, 1})));

  CHECK_THAT(error_of([&] {
               write_token_file(dir / "x.bin", ids({1, 70000}));
             }),
             Contains("token 70000 at position 1 does not fit a uint16"));
  test::write_file(dir / "odd.bin", std::string(7, '\0'));
  CHECK_THAT(error_of([&] { TokenFileDataset(dir / "odd.bin", 2); }),
             Contains("odd.bin has 7 bytes, not a whole number"));
  CHECK_THAT(error_of([&] { TokenFileDataset(dir / "wide.bin", 8, TokenWidth::uint32); }),
             Contains("wide.bin has 4 tokens, fewer than one window needs (context_length 8 + 1)"));
}

TEST_CASE("text files give one tokenized example per non-blank line, indexed or streamed", "[data][text]") {
  test::TempDir dir;
  test::write_file(dir / "lines.txt", "ab\r\n\n  \nc\nde");
  const TextLineDataset data(dir / "lines.txt", byte_tokens);
  REQUIRE(data.size() == 3u);
  const Collated padded(data, PaddingCollator());
  torchfit::detail::BatchPlan<Collated<TextLineDataset>> padded_plan(padded, 3, false, std::nullopt);
  CHECK(torch::equal(padded_plan.batch(0).at("input_ids"),
                     torch::tensor({'a', 'b', 'c', 0, 'd', 'e'}, torch::kLong).view({3, 2})));

  const auto stream = text_line_stream(dir / "lines.txt", byte_tokens, /*rank=*/1, /*world_size=*/2);
  torchfit::detail::BatchPlan<StreamingDataset<TensorDict>> one_pass(stream, 8, false, std::nullopt);
  REQUIRE(one_pass.num_samples() == 1);  // rank 1 of 2 keeps the second line
  CHECK(torch::equal(one_pass.batch(0).at("input_ids"), ids({'c'}).view({1, 1})));

  const TextLineDataset silent(dir / "lines.txt", [](std::string_view line) {
    return line == "c" ? std::vector<int64_t>{} : byte_tokens(line);
  });
  CHECK_THAT(error_of([&] { const_cast<TextLineDataset&>(silent).get(1); }),
             Contains("lines.txt:4: the tokenizer made no token"));
}

TEST_CASE("load_csv reads numeric columns and names the file, line and column of a bad value",
          "[data][csv]") {
  test::TempDir dir;
  test::write_file(dir / "good.csv", "a,\"b\",label\r\n1, 2.5 ,0\r\n\r\n-3,+4e1,2\r\n");
  const TensorDictDataset good = load_csv(dir / "good.csv", {{"label"}});
  CHECK(torch::equal(good.columns().at("inputs"), torch::tensor({1.0f, 2.5f, -3.0f, 40.0f}).view({2, 2})));
  CHECK(torch::equal(good.columns().at("labels"), ids({0, 2})));

  test::write_file(dir / "good.tsv", "x\ty\tz\n1\t2\t3\n");
  CsvOptions regression({"x", "z"});
  regression.feature_columns = {"y"};
  regression.label_dtype = torch::kFloat;
  const TensorDictDataset tsv = load_csv(dir / "good.tsv", regression);
  CHECK(torch::equal(tsv.columns().at("labels"), torch::tensor({1.0f, 3.0f}).view({1, 2})));
  CHECK(torch::equal(tsv.columns().at("inputs"), torch::tensor({2.0f}).view({1, 1})));

  const auto refused = [&](const std::string& text, CsvOptions options = {{"label"}}) {
    test::write_file(dir / "bad.csv", text);
    return error_of([&] { load_csv(dir / "bad.csv", options); });
  };
  const std::string bad = (dir / "bad.csv").string();
  CHECK(refused("a,label\n1,0\n2,x1\n") == bad + ":3: column 2 (\"label\"): \"x1\" is not a number");
  CHECK(refused("a,label\n1,0\n\n2,3,4\n") == bad + ":4: the row has more than the header's 2 columns");
  CHECK(refused("a,label\n1,0\n2\n") == bad + ":3: the row has 1 columns but the header has 2");
  CHECK(refused("a,label\n1,\n") == bad + ":2: column 2 (\"label\"): the value is empty");
  CHECK_THAT(refused("a,label\n1,0.5\n"),
             Contains(":2: column 2 (\"label\"): label 0.5 is not a whole number"));
  CHECK_THAT(refused("a,b\n1,0\n"), Contains(":1: the header has no label column \"label\" (columns: a, b)"));
  CHECK_THAT(refused("a,label\n\"1,0\n"), Contains("malformed quoting"));
  CHECK_THAT(refused("a,label\n"), Contains("has a header but no data rows"));
}

// ---- the Trainer on each kind of data ----

namespace {

TrainingArguments quiet_args(const test::TempDir& dir) {
  TrainingArguments args;
  args.output_dir = dir.path().string();
  args.save_strategy = SaveStrategy::no;
  args.disable_tqdm = true;
  args.logging_steps = 5;
  return args;
}

/// A stream of regression samples: x (4 features, fixed by the sample's index) and y = sum(x); `length` per pass.
StreamingDataset<TensorDict> regression_stream(int64_t length, int64_t rank, int64_t world_size,
                                               std::shared_ptr<std::atomic<int64_t>> built) {
  return StreamingDataset<TensorDict>(
      [=](int64_t pass) {
        auto position = std::make_shared<int64_t>(0);
        StreamingDataset<TensorDict>::Pass p;
        p.next = [=]() -> std::optional<TensorDict> {
          if (*position == length) return std::nullopt;
          ++*built;
          const auto x = torch::randn(
              {4}, at::detail::createCPUGenerator(static_cast<uint64_t>(pass * length + (*position)++)));
          return TensorDict{{"inputs", x}, {"labels", x.sum().unsqueeze(0)}};
        };
        p.skip = [=](int64_t n) {
          const int64_t passed = std::min(n, length - *position);
          *position += passed;
          return passed;
        };
        return p;
      },
      rank, world_size);
}

torch::Tensor dict_mse(test::Mlp& model, const TensorDict& batch) {
  return torch::mse_loss(model->forward(batch.at("inputs")), batch.at("labels"));
}

}  // namespace

TEST_CASE("a transformer trains from a token file with TensorDict batches, evaluated on padded lines",
          "[data][trainer][tokens]") {
  test::TempDir dir;
  const std::string text =
      test::read_file(std::filesystem::path(TORCHFIT_SOURCE_DIR) / "examples/data/genesis.txt");
  const auto split = text.rfind('\n', 40000) + 1;
  write_token_file(dir / "train.bin",
                   torch::tensor(byte_tokens(std::string_view(text).substr(0, split)), torch::kLong));
  test::write_file(dir / "eval.txt", text.substr(split, 6000));
  const GptConfig config{/*vocab_size=*/256, /*context=*/32, /*d_model=*/32,
                         /*heads=*/2,        /*layers=*/1,   /*dropout=*/0.0};
  const auto truncated = [](std::string_view line) { return byte_tokens(line.substr(0, 32)); };
  const Collated eval(TextLineDataset(dir / "eval.txt", truncated),
                      LanguageModelingCollator(0, 8, /*shift=*/true));

  auto args = quiet_args(dir);
  args.max_steps = 40;
  args.learning_rate = 3e-3;
  args.per_device_train_batch_size = 16;
  args.per_device_eval_batch_size = 16;
  args.dataloader_num_workers = 2;
  torch::manual_seed(0);
  CharGpt model(config);
  auto loss = [](CharGpt& m, const TensorDict& batch) { return next_token_loss(m, batch); };
  Trainer trainer(model, args, TokenFileDataset(dir / "train.bin", config.context), eval, loss);
  trainer.remove_callback<PrinterCallback>();
  const double before = trainer.evaluate().at("eval_loss").get<double>();
  trainer.train();
  const double after = trainer.evaluate().at("eval_loss").get<double>();
  CHECK(before > 5.0);  // about ln(256): uniform over bytes
  CHECK(after < before - 1.5);
}

TEST_CASE("a tabular model trains from the CSV file shipped with the examples", "[data][trainer][csv]") {
  test::TempDir dir;
  const TensorDictDataset table =
      load_csv(std::filesystem::path(TORCHFIT_SOURCE_DIR) / "examples/data/wine.csv", {{"class"}});
  REQUIRE(table.size() == 178);
  TensorDict rows = table.columns();
  rows.at("inputs") = (rows.at("inputs") - rows.at("inputs").mean(0)) / rows.at("inputs").std(0);
  auto args = quiet_args(dir);
  args.num_train_epochs = 15;
  args.per_device_train_batch_size = 16;
  args.learning_rate = 3e-2;
  torch::manual_seed(0);
  torch::nn::Linear model(13, 3);
  auto loss = [](torch::nn::Linear& m, const TensorDict& batch) {
    const auto logits = m(batch.at("inputs"));
    return LossOutput{torch::cross_entropy_loss(logits, batch.at("labels")), logits, {}};
  };
  torch::Tensor seen_labels;
  auto accuracy = [&](const EvalPrediction& p) {
    seen_labels = p.label_ids;
    return Logs{
        {"accuracy", p.predictions.argmax(1).eq(p.label_ids).to(torch::kDouble).mean().item<double>()}};
  };
  const TensorDictDataset data(rows);
  Trainer trainer(model, args, data, data, loss, accuracy);
  trainer.remove_callback<PrinterCallback>();
  trainer.train();
  CHECK(trainer.evaluate().at("eval_accuracy").get<double>() > 0.9);
  CHECK(torch::equal(seen_labels, rows.at("labels")));  // label_ids: the batches' "labels", in order
}

TEST_CASE("label_names chooses the labels compute_metrics sees: one key, several stacked, or none",
          "[data][trainer][args]") {
  test::TempDir dir;
  const TensorDict columns{{"inputs", torch::randn({10, 4})},
                           {"labels", torch::arange(10)},
                           {"start_positions", torch::arange(10, 20)},
                           {"end_positions", torch::arange(20, 30)}};
  const TensorDictDataset data(columns);
  torch::nn::Linear model(4, 2);
  auto loss = [](torch::nn::Linear& m, const TensorDict& batch) {
    const auto out = m(batch.at("inputs"));
    return LossOutput{out.pow(2).mean(), out, {}};
  };
  torch::Tensor seen;
  auto remember = [&](const EvalPrediction& p) {
    seen = p.label_ids;
    return Logs::object();
  };
  auto evaluate_with = [&](std::optional<std::vector<std::string>> names) {
    auto args = quiet_args(dir);
    args.per_device_eval_batch_size = 3;  // several batches, the last one short
    args.label_names = std::move(names);
    seen = torch::Tensor();
    Trainer trainer(model, args, data, data, loss, remember);
    trainer.remove_callback<PrinterCallback>();
    trainer.evaluate();
    return seen;
  };
  CHECK(torch::equal(evaluate_with(std::nullopt), columns.at("labels")));
  CHECK(torch::equal(evaluate_with(std::vector<std::string>{"end_positions"}), columns.at("end_positions")));
  CHECK(torch::equal(evaluate_with(std::vector<std::string>{"start_positions", "end_positions"}),
                     torch::stack({columns.at("start_positions"), columns.at("end_positions")}, -1)));
  CHECK_FALSE(evaluate_with(std::vector<std::string>{"answer"}).defined());  // not in the batches
  CHECK_FALSE(evaluate_with(std::vector<std::string>{}).defined());          // HF: [] means no labels

  char arg0[] = "prog", flag[] = "--label_names", value[] = "start_positions, end_positions";
  char* argv[] = {arg0, flag, value};
  CHECK(TrainingArguments::from_argv(3, argv).label_names ==
        std::vector<std::string>{"start_positions", "end_positions"});
  char empty[] = "start_positions,";
  char* bad[] = {arg0, flag, empty};
  CHECK_THROWS_WITH(TrainingArguments::from_argv(3, bad),
                    Contains("--label_names has an empty name (got \"start_positions,\")"));
}

TEST_CASE("a streaming dataset needs --max_steps and resumes at exactly its data position",
          "[data][trainer][stream]") {
  test::TempDir dir;
  auto built = std::make_shared<std::atomic<int64_t>>(0);
  auto args = quiet_args(dir);
  args.per_device_train_batch_size = 4;
  args.gradient_accumulation_steps = 2;
  args.learning_rate = 1e-2;
  args.lr_scheduler_type = "constant";

  SECTION("without --max_steps it is refused") {
    CHECK_THROWS_WITH(Trainer(test::Mlp(), args, regression_stream(10, 0, 1, built), dict_mse).train(),
                      Contains("--max_steps") && Contains("streaming dataset"));
  }

  for (const int64_t workers : {0, 2}) {
    CAPTURE(workers);
    args.dataloader_num_workers = workers;
    // Passes of 10 samples, shard 1 of 2 (5 samples a pass): 8 samples a step cross pass ends every few steps.
    const auto train = [&](int64_t max_steps, std::optional<std::string> resume) {
      args.max_steps = max_steps;
      args.save_strategy = SaveStrategy::steps;
      args.save_steps = 5;
      torch::manual_seed(3);
      test::Mlp model(4, 16, 1, /*dropout=*/0.1);
      Trainer trainer(model, args, regression_stream(10, 1, 2, built), dict_mse);
      trainer.remove_callback<PrinterCallback>();
      trainer.train(resume);
      return model->fc1->weight.clone();
    };
    const auto uninterrupted = train(12, std::nullopt);
    std::filesystem::remove_all(dir.path());
    train(5, std::nullopt);
    *built = 0;
    const auto resumed = train(12, (dir / "checkpoint-5").string());
    CHECK(torch::equal(resumed, uninterrupted));
    // The skip built none of the 40 consumed samples; workers may read up to 2 batches each ahead.
    CHECK(*built >= 7 * 8);
    CHECK(*built <= 7 * 8 + 2 * workers * 4);
    std::filesystem::remove_all(dir.path());
  }
}

// ---- pinned memory (CUDA) ----

// A CPU-only libtorch installs c10/cuda headers without the CUDA build's generated macros.
#if __has_include(<c10/cuda/CUDAFunctions.h>) && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>) && \
    __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDAFunctions.h>
#define TORCHFIT_TEST_SYNC_DEBUG 1
#endif

namespace {

#if TORCH_VERSION_MAJOR >= 2
namespace warnings = c10::WarningUtils;
#else
namespace warnings = c10::Warning;
#endif

// Counts, between on_step_begin and on_step_end, the operations that wait for the GPU: libtorch's sync debug
// mode reports each as a warning (where its CUDA headers are at hand), and every value the library reads back
// goes through detail::host_reads().
struct SyncCounter : TrainerCallback, c10::WarningHandler {
  void on_step_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    reads_at_begin = torchfit::detail::host_reads();
    syncs_at_begin = syncs;
  }
  void on_step_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    ++steps;
    in_steps += (torchfit::detail::host_reads() - reads_at_begin) + (syncs - syncs_at_begin);
  }
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning& warning) override { count(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& msg, bool) override { count(msg); }
#endif
  void count(const std::string& msg) {
    if (msg.find("synchronizing CUDA operation") != std::string::npos) ++syncs;
  }
  int64_t steps = 0, in_steps = 0, reads_at_begin = 0, syncs = 0, syncs_at_begin = 0;
};

}  // namespace

TEST_CASE("on CUDA batches are pinned and reach the device without a host sync outside logging steps",
          "[data][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("skipped: no CUDA device");
    return;
  }
  SECTION("the prefetcher pins each batch, on the worker that built it") {
    const auto data = test::regression_data(24);
    for (const int64_t workers : {0, 2}) {
      torchfit::detail::BatchPrefetcher<std::pair<torch::Tensor, torch::Tensor>> batches(
          data, 4, false, 1, 0, workers, {}, /*pin=*/true);
      const auto batch = batches.next();
      CHECK(batch.data.is_pinned());
      CHECK(batch.target.is_pinned());
      torchfit::detail::BatchPrefetcher<std::pair<torch::Tensor, torch::Tensor>> unpinned(data, 4, false, 1,
                                                                                          0, workers);
      CHECK(!unpinned.next().data.is_pinned());
    }
  }
  SECTION("training reads nothing back and waits for nothing between on_step_begin and on_step_end") {
    for (const bool pin : {true, false}) {
      test::TempDir dir;
      TrainingArguments args;
      args.output_dir = dir.path().string();
      args.report_to = {"none"};
      args.disable_tqdm = true;
      args.save_strategy = SaveStrategy::no;
      args.max_steps = 20;
      args.logging_steps = 10;
      args.dataloader_pin_memory = pin;
      Trainer trainer(test::Mlp(), args, test::regression_data(64), test::mse_loss);
      auto counter = trainer.add_callback<SyncCounter>();
      warnings::WarningHandlerGuard handler(counter.get());
#ifdef TORCHFIT_TEST_SYNC_DEBUG
      c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
#endif
      trainer.train();
#ifdef TORCHFIT_TEST_SYNC_DEBUG
      c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
      CHECK(counter->syncs > 0);  // the logging steps' reads were seen
#endif
      CHECK(counter->steps == 20);
      CHECK(counter->in_steps == 0);
    }
  }
}
