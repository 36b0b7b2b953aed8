// SPDX-License-Identifier: MIT
#include <sys/resource.h>

#include <csignal>

#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/detail/safetensors.hpp"

using namespace torchfit;
using torchfit::detail::load_safetensors;
using torchfit::detail::load_safetensors_metadata;
using torchfit::detail::save_safetensors;

namespace {

using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
  return out;
}

std::string bytes_of(const torch::Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.nbytes());
}

// The tensors of tests/data/reference.safetensors (see make_safetensors_fixture.py), in another order.
Tensors reference_tensors() {
  return {
      {"mask", torch::tensor({true, false, true})},
      {"tab\tname", torch::tensor({9}, torch::kByte)},
      {"weight", torch::tensor({-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}).view({2, 3})},
      {"bias", torch::tensor({0.1, -2.25, 1e300}, torch::kDouble)},
      {"half", torch::tensor({1.0f, -2.0f, 0.5f, 65504.0f}).to(torch::kHalf)},
      {"brain", torch::tensor({1.0f, -3.5f}).to(torch::kBFloat16)},
      {"count", torch::tensor(int64_t{-7})},
      {"ids", torch::tensor({1, -2, 2147483647, -2147483647 - 1}, torch::kInt).view({2, 2})},
      {"short", torch::tensor({-32768, 0, 32767}, torch::kShort)},
      {"tiny", torch::tensor({-128, 127}, torch::kChar)},
      {"bytes", torch::tensor({0, 128, 255}, torch::kByte)},
      {"empty", torch::zeros({0, 4})},
      {"\xc3\xa9.weight", torch::tensor({2.0f})},
  };
}

}  // namespace

TEST_CASE("every dtype round-trips with its shape, values and name", "[safetensors]") {
  test::TempDir dir;
  const Tensors tensors = {
      {"f32", torch::randn({3, 4})},
      {"f64", torch::randn({2}, torch::kDouble)},
      {"f16", torch::randn({5}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"i64", torch::arange(-3, 3, torch::kLong)},
      {"i32", torch::arange(6, torch::kInt).view({2, 3})},
      {"i16", torch::arange(-2, 2, torch::kShort)},
      {"i8", torch::arange(-2, 2, torch::kChar)},
      {"u8", torch::arange(250, 256, torch::kInt).to(torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::zeros({0, 7})},
      {"strided", torch::randn({4, 6}).t()},                                       // non-contiguous
      {"slice", torch::arange(20, torch::kLong).view({4, 5})[1].narrow(0, 1, 3)},  // an offset view
  };
  save_safetensors(dir / "all.safetensors", tensors, {{"format", "pt"}});
  const auto loaded = load_safetensors(dir / "all.safetensors");
  REQUIRE(loaded.size() == tensors.size());
  std::map<std::string, torch::Tensor> by_name(loaded.begin(), loaded.end());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    REQUIRE(by_name.count(name) == 1);
    CHECK(by_name[name].scalar_type() == t.scalar_type());
    CHECK(by_name[name].sizes() == t.sizes());
    CHECK(by_name[name].is_contiguous());
    CHECK(torch::equal(by_name[name], t));
  }
  CHECK(load_safetensors_metadata(dir / "all.safetensors") ==
        std::map<std::string, std::string>{{"format", "pt"}});
}

TEST_CASE("the bytes follow the format byte for byte", "[safetensors]") {
  test::TempDir dir;
  // 8-byte length, compact JSON with __metadata__ first (its keys sorted), tensors ordered by dtype (larger
  // alignment first) then name, spaces up to a multiple of 8, then the data in header order.
  save_safetensors(
      dir / "t.safetensors",
      {{"b", torch::tensor({1.0f, 2.0f})}, {"a", torch::tensor({7.0f})}, {"c", torch::tensor({int64_t{5}})}},
      {{"z", "last"}, {"format", "pt"}});
  const std::string header =
      R"({"__metadata__":{"format":"pt","z":"last"},"c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})";
  REQUIRE(header.size() == 205);
  const std::string padded = header + "   ";  // 205 + 3 = 208 = 26 * 8
  const std::string data =
      bytes_of(torch::tensor({int64_t{5}})) + bytes_of(torch::tensor({7.0f, 1.0f, 2.0f}));
  CHECK(test::read_file(dir / "t.safetensors") == le64(208) + padded + data);
}

TEST_CASE("the output matches the Rust library's own serialization test vectors", "[safetensors]") {
  // The expected bytes that safetensors/src/tensor.rs asserts in test_serialization,
  // test_serialization_forced_alignement and test_empty.
  test::TempDir dir;
  const auto file = dir / "t.safetensors";
  const auto values = torch::arange(6, torch::kFloat);
  const std::string data = bytes_of(values);
  REQUIRE(data.substr(4, 4) == std::string("\x00\x00\x80\x3f", 4));  // 1.0f, little-endian

  save_safetensors(file, {{"attn.0", values.view({1, 2, 3})}});
  CHECK(test::read_file(file) ==
        le64(64) + R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})" + data);

  save_safetensors(file, {{"attn0", values.view({1, 1, 2, 3})}});
  CHECK(test::read_file(file) ==
        le64(72) + R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" + "       " + data);

  save_safetensors(file, {});
  CHECK(test::read_file(file) == le64(8) + "{}      ");
  CHECK(load_safetensors(file).empty());

  save_safetensors(file, {}, {{"framework", "pt"}});
  CHECK(test::read_file(file) == le64(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
  CHECK(load_safetensors_metadata(file) == std::map<std::string, std::string>{{"framework", "pt"}});
}

TEST_CASE("a file laid out by the Python library's rules is read and reproduced byte for byte",
          "[safetensors]") {
  const auto reference = test::data_path("reference.safetensors");
  const auto loaded = load_safetensors(reference);
  // Header order: by dtype (larger alignment first), then by the names' bytes ("\xc3\xa9" after ASCII).
  std::vector<std::string> names;
  for (const auto& [name, t] : loaded) names.push_back(name);
  CHECK(names == std::vector<std::string>{"count", "bias", "empty", "weight", "\xc3\xa9.weight", "ids",
                                          "brain", "half", "short", "tiny", "bytes", "tab\tname", "mask"});
  std::map<std::string, torch::Tensor> by_name(loaded.begin(), loaded.end());
  for (const auto& [name, expected] : reference_tensors()) {
    INFO(name);
    REQUIRE(by_name.count(name) == 1);
    CHECK(by_name[name].scalar_type() == expected.scalar_type());
    CHECK(by_name[name].sizes() == expected.sizes());
    CHECK(torch::equal(by_name[name], expected));
  }
  CHECK(load_safetensors_metadata(reference) == std::map<std::string, std::string>{{"format", "pt"}});

  test::TempDir dir;
  save_safetensors(dir / "ours.safetensors", reference_tensors(), {{"format", "pt"}});
  CHECK(test::read_file(dir / "ours.safetensors") == test::read_file(reference));
}

TEST_CASE("a file without metadata has none", "[safetensors]") {
  test::TempDir dir;
  save_safetensors(dir / "t.safetensors", {{"x", torch::ones({2})}});
  CHECK(test::read_file(dir / "t.safetensors").substr(8, 5) == R"({"x":)");
  CHECK(load_safetensors_metadata(dir / "t.safetensors").empty());
}

TEST_CASE("a corrupt file is refused with a message naming the file and the problem", "[safetensors]") {
  test::TempDir dir;
  const auto file = dir / "bad.safetensors";
  const std::string good_header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const auto make = [&](const std::string& header, const std::string& data) {
    test::write_file(file, le64(header.size()) + header + data);
  };
  const auto refused = [&](const std::string& problem) {
    const std::string message = file.string() + " is not a valid safetensors file: " + problem;
    CHECK_THROWS_AS(load_safetensors(file), CheckpointError);
    CHECK_THROWS_WITH(load_safetensors(file), message);
    CHECK_THROWS_WITH(load_safetensors_metadata(file), message);
  };
  SECTION("shorter than 8 bytes") {
    test::write_file(file, "abc");
    refused("it has 3 bytes, shorter than its 8-byte header length");
  }
  SECTION("header length beyond the file") {
    test::write_file(file, le64(1000) + "{}");
    refused("header length 1000 runs past the end of the file (10 bytes; truncated?)");
  }
  SECTION("header not JSON") {
    make("{not json", "");
    CHECK_THROWS_WITH(load_safetensors(file),
                      Catch::StartsWith(file.string() +
                                        " is not a valid safetensors file: the header is not valid JSON ("));
  }
  SECTION("header not an object") {
    make("[1, 2]  ", "");
    refused("the header is array, not a JSON object");
  }
  SECTION("unknown dtype") {
    make(R"({"x":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, '\0'));
    refused(
        R"(tensor "x" has unsupported dtype "F128" (supported: BOOL, U8, I8, I16, F16, BF16, I32, F32, F64, I64))");
  }
  SECTION("a missing field") {
    make(R"({"x":{"dtype":"F32","shape":[1]}})", std::string(4, '\0'));
    refused(R"(tensor "x" needs "dtype", "shape" and "data_offsets" (got {"dtype":"F32","shape":[1]}))");
  }
  SECTION("a negative dimension") {
    make(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0'));
    refused(R"(tensor "x" has shape entry -1 where a non-negative integer belongs)");
  }
  SECTION("a fractional offset") {
    make(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", std::string(4, '\0'));
    refused(R"(tensor "x" has data_offsets entry 4.0 where a non-negative integer belongs)");
  }
  SECTION("a shape too large to address") {
    make(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "");
    refused(R"(tensor "x" has shape [4294967296,4294967296], too large to address)");
  }
  SECTION("an offset no integer type holds") {
    make(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,1e999]}})", std::string(8, '\0'));
    CHECK_THROWS_AS(load_safetensors(file), CheckpointError);
    CHECK_THROWS_WITH(load_safetensors(file),
                      file.string() +
                          " is not a valid safetensors file: the header is not valid JSON "
                          "([json.exception.out_of_range.406] number overflow parsing '1e999')");
  }
  SECTION("an offset past 2^64") {
    make(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})",
         std::string(8, '\0'));
    refused(
        R"(tensor "x" has data_offsets entry 1.8446744073709552e+19 where a non-negative integer belongs)");
  }
  SECTION("a negative offset") {
    make(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", std::string(8, '\0'));
    refused(R"(tensor "x" has data_offsets entry -1 where a non-negative integer belongs)");
  }
  SECTION("a shape whose element count passes 2^64 only with the element size") {
    make(R"({"x":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", "");
    refused(R"(tensor "x" has shape [4611686018427387904], too large to address)");
  }
  SECTION("a header nested deeper than any real one") {
    make(R"({"x":)" + std::string(20, '[') + std::string(20, ']') + "}", "");
    refused("the header nests deeper than 16 levels");
  }
  SECTION("shape and offsets disagree") {
    make(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
    refused(R"(tensor "x" has data_offsets [0, 8] but its shape [3] and dtype F32 need 12 bytes)");
  }
  SECTION("offsets outside the data section (truncated data)") {
    make(good_header, std::string(4, '\0'));
    refused(R"(tensor "x" ends at byte 8 of a 4-byte data section (truncated?))");
  }
  SECTION("overlapping tensors") {
    make(
        R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
        std::string(8, '\0'));
    refused(R"(tensor "y" starts at byte 4 where byte 8 was expected (overlapping tensors or a gap))");
  }
  SECTION("a gap between tensors") {
    make(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'));
    refused(R"(tensor "x" starts at byte 4 where byte 0 was expected (overlapping tensors or a gap))");
  }
  SECTION("bytes after the last tensor") {
    make(good_header, std::string(12, '\0'));
    refused("the data section has 12 bytes but the tensors cover 8");
  }
  SECTION("a duplicate name") {
    make(
        R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
        std::string(8, '\0'));
    refused(R"(the header names "x" twice)");
  }
  SECTION("metadata that is not strings") {
    make(R"({"__metadata__":{"epoch":3},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
         std::string(8, '\0'));
    refused(R"(__metadata__ entry "epoch" is 3, not a string)");
  }
  SECTION("a missing file") {
    CHECK_THROWS_AS(load_safetensors(dir / "none.safetensors"), CheckpointError);
    CHECK_THROWS_WITH(load_safetensors(dir / "none.safetensors"),
                      Catch::StartsWith("cannot read " + (dir / "none.safetensors").string() + ": "));
  }
}

TEST_CASE("tensors that safetensors cannot hold are refused before anything is written", "[safetensors]") {
  test::TempDir dir;
  const auto file = dir / "t.safetensors";
  const auto refused = [&](const Tensors& tensors, const std::string& message) {
    CHECK_THROWS_AS(save_safetensors(file, tensors), CheckpointError);
    CHECK_THROWS_WITH(save_safetensors(file, tensors), message);
    CHECK_FALSE(std::filesystem::exists(file));
  };
  refused(
      {{"ok", torch::ones({1})}, {"z", torch::ones({2}, torch::kComplexFloat)}},
      "cannot save tensor \"z\" to " + file.string() +
          ": dtype ComplexFloat has no safetensors equivalent (supported: BOOL, U8, I8, I16, F16, BF16, I32, "
          "F32, F64, I64)");
  refused({{"w", torch::ones({1})}, {"w", torch::zeros({1})}},
          "cannot save tensor \"w\" to " + file.string() + ": another tensor has the same name");
  refused({{"__metadata__", torch::ones({1})}}, "cannot save tensor \"__metadata__\" to " + file.string() +
                                                    ": the name is reserved for the file's metadata");
  refused({{"u", torch::Tensor()}},
          "cannot save tensor \"u\" to " + file.string() + ": the tensor is undefined");
}

TEST_CASE("a file that cannot be written is reported with its name", "[safetensors]") {
  test::TempDir dir;
  const auto missing = dir / "no-such-dir" / "t.safetensors";
  CHECK_THROWS_WITH(save_safetensors(missing, {{"x", torch::ones({1})}}),
                    "cannot create " + missing.string() + ": No such file or directory");
  // /dev/full accepts the open and fails every write with ENOSPC; being a device, it is not removed afterwards.
  CHECK_THROWS_WITH(save_safetensors("/dev/full", {{"x", torch::ones({100000})}}),
                    "cannot write /dev/full: No space left on device");
  CHECK(std::filesystem::exists("/dev/full"));
}

TEST_CASE("a write that fails midway leaves no partial file", "[safetensors]") {
  // A full disk seen through a file size limit: writes past it fail with EFBIG while SIGXFSZ is ignored.
  struct FileSizeLimit {
    explicit FileSizeLimit(rlim_t bytes) : previous_handler(signal(SIGXFSZ, SIG_IGN)) {
      getrlimit(RLIMIT_FSIZE, &previous);
      const rlimit limited{bytes, previous.rlim_max};
      setrlimit(RLIMIT_FSIZE, &limited);
    }
    ~FileSizeLimit() {
      setrlimit(RLIMIT_FSIZE, &previous);
      signal(SIGXFSZ, previous_handler);
    }
    rlimit previous{};
    void (*previous_handler)(int);
  };
  test::TempDir dir;
  const auto file = dir / "t.safetensors";
  const Tensors tensors = {{"x", torch::ones({100000})}};
  {
    FileSizeLimit limit(4096);
    CHECK_THROWS_WITH(save_safetensors(file, tensors), "cannot write " + file.string() + ": File too large");
  }
  CHECK_FALSE(std::filesystem::exists(file));
}
