// SPDX-License-Identifier: MIT
// Seeded mutations of valid checkpoint files: every input is either loaded or refused with a torchfit::Error,
// never another exception, a crash or a hang.
#include <cctype>
#include <cstdint>
#include <random>
#include <string>
#include <typeinfo>
#include <vector>

#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/detail/safetensors.hpp"
#include "torchfit/trainer_state.hpp"

using namespace torchfit;
namespace fs = std::filesystem;

namespace {

// Values at the edges of what JSON numbers and the loaders' integer types hold.
const std::vector<std::string> edge_values = {"0",
                                              "-0",
                                              "-1",
                                              "1e999",
                                              "-1e999",
                                              "1e-999",
                                              "0.5",
                                              "-9223372036854775808",
                                              "9223372036854775807",
                                              "9223372036854775808",
                                              "18446744073709551615",
                                              "18446744073709551616",
                                              "4294967296",
                                              "1e19",
                                              "NaN",
                                              "Infinity",
                                              "-Infinity",
                                              "null",
                                              "true",
                                              "\"x\"",
                                              "[]",
                                              "{}",
                                              "[4294967296,4294967296,4294967296]",
                                              "[0,18446744073709551615]",
                                              "99999999999999999999999999999"};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : random_(seed) {}

  /// One to three random edits of `bytes`.
  std::string mutate(std::string bytes) {
    for (std::size_t rounds = 1 + below(3); rounds > 0; --rounds) edit(bytes);
    return bytes;
  }

  /// A JSON text with one number, string or literal replaced by an edge value.
  std::string replace_token(const std::string& text) {
    std::vector<std::pair<std::size_t, std::size_t>> tokens;  // [begin, end) of numbers and literals
    for (std::size_t i = 0; i < text.size();) {
      const std::size_t start = i;
      while (i < text.size() && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '-' ||
                                 text[i] == '+' || text[i] == '.'))
        ++i;
      if (i > start) tokens.emplace_back(start, i);
      if (i == start) ++i;
    }
    if (tokens.empty()) return text;
    const auto [begin, end] = tokens[below(tokens.size())];
    return text.substr(0, begin) + edge_values[below(edge_values.size())] + text.substr(end);
  }

  std::size_t below(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(random_); }

 private:
  void edit(std::string& bytes) {
    const std::size_t at = bytes.empty() ? 0 : below(bytes.size());
    switch (below(6)) {
      case 0:  // flip a bit
        if (!bytes.empty()) bytes[at] = static_cast<char>(bytes[at] ^ (1 << below(8)));
        break;
      case 1:  // any byte
        if (!bytes.empty()) bytes[at] = static_cast<char>(below(256));
        break;
      case 2:  // truncate
        bytes.resize(at);
        break;
      case 3:  // insert random bytes
        bytes.insert(at, std::string(1 + below(8), static_cast<char>(below(256))));
        break;
      case 4:  // delete a range
        bytes.erase(at, 1 + below(16));
        break;
      default:  // duplicate a range
        bytes.insert(at, bytes.substr(at, 1 + below(32)));
        break;
    }
  }

  std::mt19937_64 random_;
};

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(v >> (8 * i));
  return out;
}

// Runs `load` on each input; anything but success or a torchfit::Error fails the test, naming the input.
template <typename Load>
void check_loaded_or_refused(const std::string& what, int64_t index, const std::string& input, Load&& load,
                             int64_t& refused) {
  try {
    load();
  } catch (const Error&) {
    ++refused;
  } catch (const std::exception& e) {
    const std::string shown =
        nlohmann::json(input).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
    FAIL(what << " mutation " << index << " escaped as " << typeid(e).name() << ": " << e.what()
              << "\ninput: " << shown);
  }
}

}  // namespace

TEST_CASE("mutated safetensors files are loaded or refused with a CheckpointError", "[checkpoint][fuzz]") {
  test::TempDir dir;
  const fs::path valid = dir / "valid.safetensors";
  torchfit::detail::save_safetensors(valid,
                                     {{"fc1.weight", torch::randn({16, 4})},
                                      {"fc1.bias", torch::randn({16})},
                                      {"steps", torch::arange(3, torch::kLong)},
                                      {"mask", torch::tensor({true, false})},
                                      {"half", torch::ones({2, 2}, torch::kHalf)},
                                      {"empty", torch::zeros({0, 3})}},
                                     {{"format", "pt"}});
  const std::string bytes = test::read_file(valid);
  std::size_t header_length = 0;
  for (int i = 7; i >= 0; --i)
    header_length = header_length << 8 | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  const std::string header = bytes.substr(8, header_length), data = bytes.substr(8 + header_length);

  Mutator mutator(20240611);
  const fs::path file = dir / "mutated.safetensors";
  int64_t refused = 0;
  constexpr int64_t runs = 3000;
  for (int64_t i = 0; i < runs; ++i) {
    std::string input;
    switch (i % 3) {
      case 0:  // anywhere in the file
        input = mutator.mutate(bytes);
        break;
      case 1: {  // in the header, with its length kept right so the edit reaches the JSON parser and the checks
        const std::string h = mutator.mutate(header);
        input = le64(h.size()) + h + data;
        break;
      }
      default: {  // a number or literal of the header replaced by an edge value
        const std::string h = mutator.replace_token(header);
        input = le64(h.size()) + h + data;
        break;
      }
    }
    test::write_file(file, input);
    check_loaded_or_refused(
        "safetensors", i, input, [&] { torchfit::detail::load_safetensors(file); }, refused);
    check_loaded_or_refused(
        "safetensors metadata", i, input, [&] { torchfit::detail::load_safetensors_metadata(file); },
        refused);
  }
  CHECK(refused > runs);  // most mutations are caught (two loaders per input)
}

TEST_CASE("mutated trainer_state.json files are loaded or refused with a FormatError", "[checkpoint][fuzz]") {
  test::TempDir dir;
  const std::vector<std::string> valid = {test::read_file(test::data_path("state_tricky.json")),
                                          test::read_file(test::data_path("state_hf_example.json"))};
  test::CaptureLog log;  // unknown fields are warnings
  Mutator mutator(7);
  const fs::path file = dir / "trainer_state.json";
  int64_t refused = 0;
  constexpr int64_t runs = 3000;
  for (int64_t i = 0; i < runs; ++i) {
    const std::string& base = valid[static_cast<std::size_t>(i) % valid.size()];
    const std::string input = i % 2 == 0 ? mutator.mutate(base) : mutator.replace_token(base);
    test::write_file(file, input);
    check_loaded_or_refused(
        "trainer_state.json", i, input, [&] { TrainerState::load_from_json(file); }, refused);
  }
  CHECK(refused > runs / 2);
}
