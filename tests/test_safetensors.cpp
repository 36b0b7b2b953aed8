// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/detail/safetensors.hpp"

using namespace torchfit;
using torchfit::detail::load_safetensors;
using torchfit::detail::save_safetensors;

namespace {

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
  return out;
}

}  // namespace

TEST_CASE("every dtype round-trips with its shape, values and name", "[safetensors]") {
  test::TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 4})},
      {"f64", torch::randn({2}, torch::kDouble)},
      {"f16", torch::randn({5}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"i64", torch::arange(-3, 3, torch::kLong)},
      {"i32", torch::arange(6, torch::kInt).view({2, 3})},
      {"i16", torch::arange(4, torch::kShort)},
      {"i8", torch::arange(-2, 2, torch::kChar)},
      {"u8", torch::arange(250, 256, torch::kInt).to(torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::zeros({0, 7})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input
  };
  save_safetensors(dir / "all.safetensors", tensors, {{"format", "pt"}});
  auto loaded = load_safetensors(dir / "all.safetensors");
  REQUIRE(loaded.size() == tensors.size());
  std::map<std::string, torch::Tensor> by_name(loaded.begin(), loaded.end());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    REQUIRE(by_name.count(name) == 1);
    CHECK(by_name[name].scalar_type() == t.scalar_type());
    CHECK(by_name[name].sizes() == t.sizes());
    CHECK(torch::equal(by_name[name], t));
  }
  CHECK(torchfit::detail::load_safetensors_metadata(dir / "all.safetensors") == std::map<std::string, std::string>{{"format", "pt"}});
}

TEST_CASE("the bytes follow the format byte for byte", "[safetensors]") {
  test::TempDir dir;
  // Written by the Rust library (what Python's save_file calls) as: 8-byte length, compact JSON with
  // __metadata__ first, tensors ordered by dtype (larger first) then name, spaces up to a multiple of 8.
  save_safetensors(dir / "t.safetensors",
                   {{"b", torch::tensor({1.0f, 2.0f})}, {"a", torch::tensor({7.0f})}, {"c", torch::tensor({int64_t{5}})}},
                   {{"format", "pt"}});
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  std::string data;
  const int64_t five = 5;
  const float values[] = {7.0f, 1.0f, 2.0f};
  data.append(reinterpret_cast<const char*>(&five), 8);
  data.append(reinterpret_cast<const char*>(values), 12);
  const std::string expected = le64(padded.size()) + padded + data;
  CHECK(padded.size() % 8 == 0);
  CHECK(test::read_file(dir / "t.safetensors") == expected);
}

TEST_CASE("a corrupt file is refused with a message naming the file and the problem", "[safetensors]") {
  test::TempDir dir;
  const auto file = dir / "bad.safetensors";
  const std::string good_header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const auto make = [&](const std::string& header, const std::string& data) {
    test::write_file(file, le64(header.size()) + header + data);
  };
  const auto refused = [&](const std::string& problem) {
    CHECK_THROWS_AS(load_safetensors(file), CheckpointError);
    CHECK_THROWS_WITH(load_safetensors(file), Catch::Contains(file.string()) && Catch::Contains(problem));
  };
  SECTION("shorter than 8 bytes") {
    test::write_file(file, "abc");
    refused("shorter than its 8-byte header length");
  }
  SECTION("header length beyond the file") {
    test::write_file(file, le64(1000) + "{}");
    refused("runs past the end of the file");
  }
  SECTION("header not JSON") {
    make("{not json", "");
    refused("the header is not JSON");
  }
  SECTION("unknown dtype") {
    make(R"({"x":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, '\0'));
    refused("unsupported dtype \"F128\"");
  }
  SECTION("shape and offsets disagree") {
    make(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
    refused("do not match its shape and dtype");
  }
  SECTION("offsets outside the data section (truncated data)") {
    make(good_header, std::string(4, '\0'));
    refused("ends at byte 8 of a 4-byte data section");
  }
  SECTION("overlapping tensors") {
    make(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
         std::string(8, '\0'));
    refused("overlaps another or leaves a gap");
  }
  SECTION("bytes after the last tensor") {
    make(good_header, std::string(12, '\0'));
    refused("the data section has 12 bytes but the tensors cover 8");
  }
  SECTION("a duplicate name") {
    make(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
         std::string(8, '\0'));
    CHECK_THROWS_AS(load_safetensors(file), CheckpointError);
  }
  SECTION("a missing file") {
    CHECK_THROWS_WITH(load_safetensors(dir / "none.safetensors"), Catch::Contains("cannot read"));
  }
}
