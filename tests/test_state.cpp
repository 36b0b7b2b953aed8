// SPDX-License-Identifier: MIT
// TrainerState and the Python-compatible JSON text forms. The fixtures under tests/data/state_*.json were
// written by Python's json module (tests/data/make_state_fixtures.py), so byte equality means "what HF
// writes".
#include <catch2/catch.hpp>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>

#include "support.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_state.hpp"

using namespace torchfit;
using test::data_path;
using test::read_file;
using torchfit::detail::python_float_repr;
using torchfit::detail::python_json_dumps;
using torchfit::detail::python_json_parse;
using torchfit::detail::python_repr;

namespace {

constexpr double infinity = std::numeric_limits<double>::infinity();
constexpr double not_a_number = std::numeric_limits<double>::quiet_NaN();

template <typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no exception)";
}

std::string saved_bytes(const TrainerState& state) {
  test::TempDir dir;
  state.save_to_json(dir / "trainer_state.json");
  return read_file(dir / "trainer_state.json");
}

json control_state(bool should_save, bool should_training_stop) {
  return TrainerControl{should_training_stop, false, should_save, false, false, {}}.state();
}

json early_stopping_state(int64_t patience, double threshold, int64_t counter) {
  return {{"args", {{"early_stopping_patience", patience}, {"early_stopping_threshold", threshold}}},
          {"attributes", {{"early_stopping_patience_counter", counter}}}};
}

TrainerState hf_example_state() {
  TrainerState s;
  s.epoch = 0.8;
  s.global_step = 100;
  s.max_steps = 500;
  s.logging_steps = 10;
  s.save_steps = 100;
  s.train_batch_size = 4;
  s.num_train_epochs = 4;
  s.total_flos = 71253452390400.0;
  s.log_history.push_back({{"loss", 1.3254},
                           {"grad_norm", 0.476042240858078},
                           {"learning_rate", 0.00040100000000000004},
                           {"epoch", 0.8},
                           {"step", 100}});
  s.stateful_callbacks["TrainerControl"] = control_state(true, false);
  return s;
}

TrainerState tricky_state() {
  const int64_t two_53_plus_1 = (int64_t{1} << 53) + 1;
  TrainerState s;
  s.epoch = 3.0;
  s.global_step = two_53_plus_1;
  s.max_steps = int64_t{1} << 62;
  s.logging_steps = 10;
  s.eval_steps = 25;
  s.save_steps = 50;
  s.train_batch_size = 32;
  s.num_train_epochs = 3;
  s.num_input_tokens_seen = int64_t{1} << 62;
  s.total_flos = 1.2345678901234568e+17;
  s.log_history = {
      {{"loss", 0.30000000000000004},
       {"grad_norm", 5e-324},
       {"learning_rate", 1e-05},
       {"epoch", 0.1},
       {"step", 10}},
      {{"loss", not_a_number},
       {"grad_norm", infinity},
       {"learning_rate", 1.5e-07},
       {"epoch", 0.2},
       {"num_input_tokens_seen", two_53_plus_1},
       {"train_tokens_per_second", 7800683751619200.0},
       {"step", 20}},
      {{"eval_loss", -infinity},
       {"eval_accuracy", 1.7976931348623157e+308},
       {"eval_f1", -0.0},
       {"eval_runtime", 0.00040100000000000004},
       {"eval_samples_per_second", 1e+16},
       {"eval_steps_per_second", 2.0},
       {"epoch", 0.2},
       {"step", 20}},
      {{"eval_café_accuracy", 0.5},
       {"eval_😀_loss", 0.25},
       {"eval_ZZ", 1},
       {"eval_～", 2},
       {"eval__", -7},
       {"note", "naïve \"quoted\" 'single' \\ tab\t nl\n cr\r ctrl\x01\x1f del\x7f bs\b ff\f 😀 训练"},
       {"epoch", 0.2},
       {"step", 20}},
      {{"train_runtime", 12.3456},
       {"train_samples_per_second", 81.0},
       {"train_steps_per_second", 1.62},
       {"total_flos", 1.2345678901234568e+17},
       {"train_loss", 0.1},
       {"epoch", 3.0},
       {"step", two_53_plus_1},
       {"uint64_max", std::numeric_limits<uint64_t>::max()}},
  };
  s.best_metric = -infinity;
  s.best_global_step = 20;
  s.best_model_checkpoint = "out/chéckpoint-20 🚀";
  s.is_local_process_zero = false;
  s.is_world_process_zero = false;
  s.is_hyper_param_search = true;
  s.trial_name = "试验-1";
  s.trial_params = {{"learning_rate", 1e-05},  {"layers", {64, 32}}, {"no_layers", json::array()},
                    {"extra", json::object()}, {"name", "naïve 😀"},  {"use_bias", true},
                    {"dropout", nullptr}};
  s.stateful_callbacks = {
      {"TrainerControl", control_state(true, true)},
      {"EarlyStoppingCallback", {early_stopping_state(3, 0.0, 1), early_stopping_state(5, 0.001, 0)}}};
  return s;
}

double from_bits(std::string_view hex) {
  uint64_t bits = 0;
  std::from_chars(hex.data(), hex.data() + hex.size(), bits, 16);
  double value = 0;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace

TEST_CASE("save_to_json writes the HF example file byte for byte", "[state]") {
  CHECK(saved_bytes(hf_example_state()) == read_file(data_path("state_hf_example.json")));
}

TEST_CASE("save_to_json writes floats, big ints, escapes and callback lists as Python does", "[state]") {
  CHECK(saved_bytes(tricky_state()) == read_file(data_path("state_tricky.json")));
}

TEST_CASE("a default state is written as Python writes TrainerState()", "[state]") {
  const TrainerState s;
  CHECK(s.to_json_string() == read_file(data_path("state_default.json")));
  CHECK(saved_bytes(s) == read_file(data_path("state_default.json")));
}

TEST_CASE("loading a Python-written state and saving it again reproduces the bytes", "[state]") {
  for (const char* name : {"state_hf_example.json", "state_tricky.json", "state_default.json"}) {
    INFO(name);
    CHECK(saved_bytes(TrainerState::load_from_json(data_path(name))) == read_file(data_path(name)));
  }
}

TEST_CASE("load_from_json restores every field with its type", "[state]") {
  const TrainerState s = TrainerState::load_from_json(data_path("state_tricky.json"));
  CHECK(s.epoch == 3.0);
  CHECK(s.global_step == (int64_t{1} << 53) + 1);
  CHECK(s.max_steps == int64_t{1} << 62);
  CHECK(s.train_batch_size == 32);
  CHECK(s.best_metric == -infinity);
  CHECK(s.best_global_step == 20);
  CHECK(s.best_model_checkpoint == "out/chéckpoint-20 🚀");
  CHECK(s.trial_name == "试验-1");
  CHECK_FALSE(s.is_world_process_zero);
  CHECK(s.is_hyper_param_search);
  REQUIRE(s.log_history.size() == 5);
  CHECK(std::isnan(s.log_history[1]["loss"].get<double>()));
  CHECK(s.log_history[1]["num_input_tokens_seen"].is_number_integer());
  CHECK(s.log_history[2]["eval_steps_per_second"].is_number_float());
  CHECK(std::signbit(s.log_history[2]["eval_f1"].get<double>()));
  CHECK(s.log_history[3]["note"] ==
        "naïve \"quoted\" 'single' \\ tab\t nl\n cr\r ctrl\x01\x1f del\x7f bs\b ff\f 😀 训练");
  CHECK(s.log_history[4]["uint64_max"].get<uint64_t>() == std::numeric_limits<uint64_t>::max());
  CHECK(s.stateful_callbacks["EarlyStoppingCallback"][1]["args"]["early_stopping_patience"] == 5);
  CHECK(TrainerControl::from_state(s.stateful_callbacks["TrainerControl"]).should_training_stop);

  const TrainerState d = TrainerState::load_from_json(data_path("state_default.json"));
  CHECK_FALSE(d.epoch.has_value());
  CHECK_FALSE(d.train_batch_size.has_value());
  CHECK(d.trial_params.is_null());
  CHECK(d.stateful_callbacks == json::object());
}

TEST_CASE("python_float_repr matches Python's repr(float)", "[state]") {
  const std::pair<double, const char*> table[] = {
      {1e-05, "1e-05"},
      {0.30000000000000004, "0.30000000000000004"},
      {1e16, "1e+16"},
      {-0.0, "-0.0"},
      {0.0, "0.0"},
      {2.0, "2.0"},
      {5e-324, "5e-324"},
      {1.7976931348623157e+308, "1.7976931348623157e+308"},
      {0.1, "0.1"},
      {1.5e-07, "1.5e-07"},
      {1.2345678901234568e+17, "1.2345678901234568e+17"},
      {7800683751619200.0, "7800683751619200.0"},
      {0.00040100000000000004, "0.00040100000000000004"},
      {0.0001, "0.0001"},
      {9.999999999999999e-05, "9.999999999999999e-05"},
      {9999999999999998.0, "9999999999999998.0"},
      {-123.456, "-123.456"},
      {1e22, "1e+22"},
      {not_a_number, "nan"},
      {infinity, "inf"},
      {-infinity, "-inf"},
  };
  for (const auto& [value, repr] : table) CHECK(python_float_repr(value) == repr);

  // 2000 doubles (random bit patterns and random short decimals) with the repr Python gave them.
  const json reference = torchfit::detail::python_json_load(data_path("state_float_reprs.json"));
  REQUIRE(reference["cases"].size() == 2000);
  for (const json& c : reference["cases"]) {
    const auto& bits = c[0].get_ref<const std::string&>();
    INFO(bits);
    CHECK(python_float_repr(from_bits(bits)) == c[1].get<std::string>());
  }
}

TEST_CASE("python_float_repr round-trips and switches to exponent notation where Python does", "[state]") {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 100000; ++i) {
    uint64_t bits = rng();
    double value = 0;
    std::memcpy(&value, &bits, sizeof value);
    if (!std::isfinite(value)) continue;
    const std::string repr = python_float_repr(value);
    INFO(repr);
    const double back = std::strtod(repr.c_str(), nullptr);
    REQUIRE(std::memcmp(&back, &value, sizeof value) == 0);
    const double magnitude = std::fabs(value);
    const bool positional = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e16);
    REQUIRE((repr.find('e') == std::string::npos) == positional);
    if (positional) REQUIRE(repr.find('.') != std::string::npos);
  }
}

TEST_CASE("python_json_dumps lays out values as Python's json.dumps", "[state]") {
  const json value = {{"name", "it's"},
                      {"q", "say \"hi\""},
                      {"nan", not_a_number},
                      {"ninf", -infinity},
                      {"none", nullptr},
                      {"flag", true},
                      {"list", {1, -2.5, "é😀"}},
                      {"ctrl", "a\nb\x01\t\x7f\xc2\x85\\"},
                      {"big", std::numeric_limits<uint64_t>::max()},
                      {"nested", {{"e", json::object()}, {"l", json::array()}}}};
  CHECK(python_json_dumps(value, -1, false) ==
        R"({"name": "it's", "q": "say \"hi\"", "nan": NaN, "ninf": -Infinity, "none": null, "flag": true, )"
        R"("list": [1, -2.5, "\u00e9\ud83d\ude00"], "ctrl": "a\nb\u0001\t\u007f\u0085\\", )"
        R"("big": 18446744073709551615, "nested": {"e": {}, "l": []}})");
  CHECK(python_json_dumps(value["nested"], 0) == "{\n\"e\": {},\n\"l\": []\n}");
  CHECK(python_json_dumps(value["list"]) == "[\n  1,\n  -2.5,\n  \"\\u00e9\\ud83d\\ude00\"\n]");
  CHECK(python_json_dumps(json(1.0)) == "1.0");
  CHECK(python_json_dumps(json(-3)) == "-3");
  CHECK_THROWS_WITH(python_json_dumps(json("bad \xff byte")),
                    Catch::Contains("is not valid UTF-8 (byte 4); Python cannot represent it"));
}

TEST_CASE("python_repr prints dicts as Python's print(logs) does", "[state]") {
  const json logs = {{"loss", 0.5824}, {"grad_norm", 5.25}, {"learning_rate", 0.0005}, {"epoch", 19.5}};
  CHECK(python_repr(logs) == "{'loss': 0.5824, 'grad_norm': 5.25, 'learning_rate': 0.0005, 'epoch': 19.5}");
  const json value = {{"name", "it's"},
                      {"q", "say \"hi\""},
                      {"both", "it's \"x\""},
                      {"nan", not_a_number},
                      {"inf", infinity},
                      {"ninf", -infinity},
                      {"none", nullptr},
                      {"flag", true},
                      {"no", false},
                      {"list", {1, -2.5, "é😀"}},
                      {"ctrl", "a\nb\x01\t\x7f\xc2\x85\\"},
                      {"big", std::numeric_limits<uint64_t>::max()},
                      {"nested", {{"e", json::object()}, {"l", json::array()}}}};
  CHECK(python_repr(value) ==
        R"({'name': "it's", 'q': 'say "hi"', 'both': 'it\'s "x"', 'nan': nan, 'inf': inf, 'ninf': -inf, )"
        R"('none': None, 'flag': True, 'no': False, 'list': [1, -2.5, 'é😀'], )"
        R"('ctrl': 'a\nb\x01\t\x7f\x85\\', )"
        R"('big': 18446744073709551615, 'nested': {'e': {}, 'l': []}})");
}

TEST_CASE("python_json_parse reads Python's extensions and keeps ints and floats apart", "[state]") {
  const json v = python_json_parse(
      R"( {"i": -7, "u": 18446744073709551615, "f": 1.0, "e": 1E+2, "n": NaN, "p": Infinity, "m": -Infinity,
           "s": "\u00e9\ud83d\ude00\/\"", "huge": 1e400, "tiny": -1e-400, "k": 1, "k": 2} )",
      "inline");
  CHECK(v["i"].is_number_integer());
  CHECK(v["i"] == -7);
  CHECK(v["u"].is_number_unsigned());
  CHECK(v["f"].is_number_float());
  CHECK(v["e"].get<double>() == 100.0);
  CHECK(std::isnan(v["n"].get<double>()));
  CHECK(v["p"].get<double>() == infinity);
  CHECK(v["m"].get<double>() == -infinity);
  CHECK(v["s"] == "é😀/\"");
  CHECK(v["huge"].get<double>() == infinity);  // Python's float('1e400')
  CHECK(v["tiny"].get<double>() == 0.0);
  CHECK(std::signbit(v["tiny"].get<double>()));
  CHECK(python_json_dumps(v, -1, false).find(R"("k": 2})") != std::string::npos);  // last value, first place
  CHECK(v.size() == 11);

  const auto message = [](const char* text) {
    return error_message([&] { python_json_parse(text, "x.json"); });
  };
  CHECK(message("{\"a\": 1,\n \"b\": tru}") ==
        "x.json: malformed JSON at line 2 column 7: expected a value, found 't'");
  CHECK(message("[01]") ==
        "x.json: malformed JSON at line 1 column 2: a number must not have leading zeros, found '0'");
  CHECK(message("[1] x") ==
        "x.json: malformed JSON at line 1 column 5: extra data after the JSON value, found 'x'");
  CHECK(message(R"(["\ud800x"])") ==
        R"(x.json: malformed JSON at line 1 column 3: unpaired UTF-16 surrogate in a \u escape, found '\\')");
  CHECK(message(R"(["a\qb"])") ==
        R"(x.json: malformed JSON at line 1 column 4: invalid escape in a string, found '\\')");
  CHECK(message("[\"a\tb\"]") ==
        R"(x.json: malformed JSON at line 1 column 4: control character in a string (must be escaped), )"
        R"(found '\t')");
  CHECK(message("[\"a\xff\"]") ==
        R"(x.json: malformed JSON at line 1 column 4: invalid UTF-8 in a string, found '\xff')");
  CHECK(message("") ==
        "x.json: malformed JSON at line 1 column 1: expected a value, found the end of the input "
        "(is the file truncated?)");
  CHECK(message(std::string(2000, '[').c_str()) ==
        "x.json: malformed JSON at line 1 column 1002: nesting deeper than 1000 levels, found '['");
}

TEST_CASE("an unknown field is a warning naming it and the file, the rest loads", "[state]") {
  test::TempDir dir;
  const auto path = dir / "trainer_state.json";
  test::write_file(path, R"({"global_step": 7, "future_field": [1], "logging_steps": 1.0})");
  test::CaptureLog log;
  const TrainerState s = TrainerState::load_from_json(path);
  CHECK(log.text() ==
        "[torchfit] warning: " + path.string() + ": ignoring unknown trainer state field \"future_field\"\n");
  CHECK(s.global_step == 7);
  CHECK(s.logging_steps == 1);
  // HF's command line makes `--logging_steps 1` the float 1.0, and a value under an "epoch" strategy stays as
  // given: both are written back as they were read.
  CHECK(s.logging_steps.is_float);
  CHECK(s.to_json().at("logging_steps").dump() == "1.0");
}

TEST_CASE("intervals keep the type HF gives them: floats from its command line, ints when converted",
          "[state]") {
  TrainingArguments args;
  args.logging_strategy = IntervalStrategy::epoch;
  args.logging_steps = 2.5;  // not validated by HF under "epoch": kept as given
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 0.25;  // a ratio: ceil(max_steps * 0.25)
  args.save_steps = 10;    // "steps" and above 1: HF's __post_init__ makes it an int
  TrainerState s;
  s.compute_steps(args, 10);
  const json j = s.to_json();
  CHECK(j.at("logging_steps").dump() == "2.5");
  CHECK(j.at("eval_steps").dump() == "3");
  CHECK(j.at("save_steps").dump() == "10");
  args.logging_strategy = IntervalStrategy::steps;
  args.logging_steps = 1;  // --logging_steps 1 is the float 1.0, not above 1: stays a float
  args.save_strategy = SaveStrategy::epoch;
  s.compute_steps(args, 10);
  CHECK(s.to_json().at("logging_steps").dump() == "1.0");
  CHECK(s.to_json().at("save_steps").dump() == "10.0");
  args.save_steps = 500;  // HF's default, an int
  s.compute_steps(args, 10);
  CHECK(s.to_json().at("save_steps").dump() == "500");
}

TEST_CASE("a field of the wrong type is a FormatError naming the field, the file and the expected type",
          "[state]") {
  test::TempDir dir;
  const auto path = dir / "trainer_state.json";
  const auto message = [&](const std::string& text) {
    test::write_file(path, text);
    return error_message([&] { TrainerState::load_from_json(path); });
  };
  const std::string file = path.string();
  CHECK(message(R"({"global_step": "ten"})") ==
        file + R"(: field "global_step" must be an integer, got "ten")");
  CHECK(message(R"({"logging_steps": "1.5"})") ==
        file + R"(: field "logging_steps" must be a number, got "1.5")");
  CHECK(message(R"({"epoch": [1, 2]})") == file + R"(: field "epoch" must be a number or null, got [1, 2])");
  CHECK(message(R"({"train_batch_size": true})") ==
        file + R"(: field "train_batch_size" must be an integer or null, got true)");
  CHECK(message(R"({"is_world_process_zero": 1})") ==
        file + R"(: field "is_world_process_zero" must be true or false, got 1)");
  CHECK(message(R"({"log_history": [{"loss": 1}, 2]})") ==
        file + R"(: field "log_history" must be a list of objects, got [{"loss": 1}, 2])");
  CHECK(message(R"({"stateful_callbacks": "x"})") ==
        file + R"(: field "stateful_callbacks" must be an object or null, got "x")");
  CHECK(message(R"({"best_model_checkpoint": 3})") ==
        file + R"(: field "best_model_checkpoint" must be a string or null, got 3)");
  CHECK(message(R"({"global_step": 18446744073709551615})") ==
        file + R"(: field "global_step" must be an integer, got 18446744073709551615)");
  CHECK(message(R"({"trial_name": [1000000000, 2000000000, 3000000000, 4000000000, 5000000000, 6]})") ==
        file + R"(: field "trial_name" must be a string or null, )"
               R"(got [1000000000, 2000000000, 3000000000, 4000000000, 50000000...)");
  CHECK(message("[]") == file + ": a trainer state must be a JSON object, got []");
}

TEST_CASE("a truncated or missing file is a FormatError naming the file and the problem", "[state]") {
  test::TempDir dir;
  const auto path = dir / "trainer_state.json";
  test::write_file(path,
                   read_file(data_path("state_hf_example.json")).substr(0, 300));  // inside log_history[0]
  CHECK(error_message([&] { TrainerState::load_from_json(path); }) ==
        path.string() +
            ": malformed JSON at line 14 column 11: unterminated string, found the end of the input "
            "(is the file truncated?)");

  const auto missing = dir / "checkpoint-5" / "trainer_state.json";
  CHECK(error_message([&] { TrainerState::load_from_json(missing); }) ==
        "cannot read " + missing.string() + ": No such file or directory");
  CHECK(error_message([&] { TrainerState::load_from_json(dir.path()); }) ==
        "cannot read " + dir.path().string() + ": it is a directory, expected a JSON file");
}

TEST_CASE("save_to_json names the path it cannot write", "[state]") {
  test::TempDir dir;
  const auto path = dir / "missing-dir" / "trainer_state.json";
  CHECK(error_message([&] { TrainerState{}.save_to_json(path); }) ==
        "cannot write the trainer state to " + path.string() + ": No such file or directory");
}

TEST_CASE("compute_steps turns ratios into step counts and keeps absolute values", "[state]") {
  TrainingArguments args;
  args.logging_steps = 0.1;
  args.save_steps = 0.5;
  TrainerState s;
  s.compute_steps(args, 95);
  CHECK(s.logging_steps == 10);  // ceil(9.5)
  CHECK(s.eval_steps == 500);    // args.eval_steps unset: unchanged
  CHECK(s.save_steps == 48);     // ceil(47.5)

  args.logging_steps = 20;
  args.eval_steps = 0.25;
  args.save_steps = 1;
  s.compute_steps(args, 95);
  CHECK(s.logging_steps == 20);
  CHECK(s.eval_steps == 24);  // ceil(23.75)
  CHECK(s.save_steps == 1);
  CHECK(s.max_steps == 0);  // compute_steps only sets the intervals
}

TEST_CASE("init_training_references records the plan and nothing else", "[state]") {
  TrainerState s = tricky_state();
  s.init_training_references(1000, 7);
  CHECK(s.max_steps == 1000);
  CHECK(s.num_train_epochs == 7);
  CHECK(s.trial_params.is_null());
  CHECK(s.is_local_process_zero);
  CHECK(s.is_world_process_zero);
  CHECK(s.global_step == (int64_t{1} << 53) + 1);
  CHECK(s.epoch == 3.0);
  CHECK(s.log_history.size() == 5);
  CHECK(s.trial_name == "试验-1");
}
