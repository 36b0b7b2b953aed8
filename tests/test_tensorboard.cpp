// SPDX-License-Identifier: MIT
// TensorBoardCallback, checked with a reader written here from the published formats (TFRecord framing,
// CRC-32C, the Event / Summary / HParams .proto field numbers), independent of the writer's code.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "support.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/integrations/csv.hpp"
#include "torchfit/integrations/tensorboard.hpp"
#include "torchfit/torchfit.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::TempDir;

using torchfit::test::ScopedEnv;

namespace {

// ---- an independent reader ----

// Bit-at-a-time CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
uint32_t reference_crc32c(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFU;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc & 1U) ? (crc >> 1) ^ 0x82F63B78U : crc >> 1;
  }
  return ~crc;
}

uint32_t reference_mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8U; }

uint64_t little_endian(const std::string& bytes, size_t offset, int size) {
  uint64_t value = 0;
  for (int i = size - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return value;
}

struct TfRecords {
  std::vector<std::string> payloads;  // complete records, both CRCs checked
  bool truncated_tail = false;        // the file ends inside a record
};

// Reads TFRecord framing; a record cut short at the end of the file is reported, not read (as TensorBoard
// does).
TfRecords read_tfrecords(const std::string& bytes) {
  TfRecords out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 12) {
      out.truncated_tail = true;
      break;
    }
    const uint64_t length = little_endian(bytes, pos, 8);
    REQUIRE(little_endian(bytes, pos + 8, 4) == reference_mask(reference_crc32c(bytes.substr(pos, 8))));
    if (bytes.size() - pos - 12 < length + 4) {
      out.truncated_tail = true;
      break;
    }
    std::string payload = bytes.substr(pos + 12, length);
    REQUIRE(little_endian(bytes, pos + 12 + length, 4) == reference_mask(reference_crc32c(payload)));
    out.payloads.push_back(std::move(payload));
    pos += 12 + length + 4;
  }
  return out;
}

// One protobuf field: varints and fixed-width values in `number_bits`, length-delimited ones in `bytes`.
struct Field {
  uint32_t number = 0;
  int wire_type = 0;
  uint64_t number_bits = 0;
  std::string bytes;
  double as_double() const {
    REQUIRE(wire_type == 1);
    double d;
    std::memcpy(&d, &number_bits, 8);
    return d;
  }
  float as_float() const {
    REQUIRE(wire_type == 5);
    const auto bits = static_cast<uint32_t>(number_bits);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

uint64_t read_varint(const std::string& bytes, size_t& pos) {
  uint64_t value = 0;
  for (int shift = 0;; shift += 7) {
    REQUIRE(pos < bytes.size());
    REQUIRE(shift < 64);
    const auto byte = static_cast<unsigned char>(bytes[pos++]);
    value |= uint64_t{byte & 0x7FU} << shift;
    if ((byte & 0x80U) == 0) return value;
  }
}

std::vector<Field> decode(const std::string& message) {
  std::vector<Field> fields;
  size_t pos = 0;
  while (pos < message.size()) {
    const uint64_t key = read_varint(message, pos);
    Field f;
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire_type = static_cast<int>(key & 7);
    switch (f.wire_type) {
      case 0:
        f.number_bits = read_varint(message, pos);
        break;
      case 1:
        REQUIRE(pos + 8 <= message.size());
        f.number_bits = little_endian(message, pos, 8);
        pos += 8;
        break;
      case 2: {
        const uint64_t length = read_varint(message, pos);
        REQUIRE(pos + length <= message.size());
        f.bytes = message.substr(pos, length);
        pos += length;
        break;
      }
      case 5:
        REQUIRE(pos + 4 <= message.size());
        f.number_bits = little_endian(message, pos, 4);
        pos += 4;
        break;
      default:
        FAIL("unexpected wire type " << f.wire_type);
    }
    fields.push_back(std::move(f));
  }
  return fields;
}

std::vector<Field> fields_numbered(const std::string& message, uint32_t number) {
  std::vector<Field> out;
  for (auto& f : decode(message))
    if (f.number == number) out.push_back(f);
  return out;
}

std::optional<Field> field(const std::string& message, uint32_t number) {
  auto all = fields_numbered(message, number);
  REQUIRE(all.size() <= 1);
  if (all.empty()) return std::nullopt;
  return all.front();
}

Field required_field(const std::string& message, uint32_t number) {
  auto f = field(message, number);
  REQUIRE(f.has_value());
  return *f;
}

// tensorboard.Summary.Value, as far as this writer uses it.
struct Value {
  std::string tag;
  std::optional<float> simple_value;
  std::optional<std::string> plugin_name;
  std::string plugin_content;
  std::optional<std::string> tensor;
};

// tensorboard.Event.
struct ParsedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::optional<std::string> file_version;
  std::vector<Value> values;
};

ParsedEvent parse_event(const std::string& payload) {
  ParsedEvent e;
  e.wall_time = required_field(payload, 1).as_double();
  if (auto step = field(payload, 2)) e.step = static_cast<int64_t>(step->number_bits);
  if (auto version = field(payload, 3)) e.file_version = version->bytes;
  if (auto summary = field(payload, 5)) {
    for (const auto& v : fields_numbered(summary->bytes, 1)) {
      Value value;
      value.tag = required_field(v.bytes, 1).bytes;
      if (auto simple = field(v.bytes, 2)) value.simple_value = simple->as_float();
      if (auto metadata = field(v.bytes, 9)) {
        const auto plugin_data = required_field(metadata->bytes, 1).bytes;
        value.plugin_name = required_field(plugin_data, 1).bytes;
        if (auto content = field(plugin_data, 2)) value.plugin_content = content->bytes;
      }
      if (auto tensor = field(v.bytes, 8)) value.tensor = tensor->bytes;
      e.values.push_back(std::move(value));
    }
  }
  return e;
}

std::vector<ParsedEvent> read_events(const fs::path& file) {
  const auto records = read_tfrecords(test::read_file(file));
  REQUIRE_FALSE(records.truncated_tail);
  std::vector<ParsedEvent> events;
  for (const auto& payload : records.payloads) events.push_back(parse_event(payload));
  return events;
}

// The utf-8 text of a text-plugin value: a DT_STRING tensor of shape [1].
std::string text_of(const Value& value) {
  REQUIRE(value.plugin_name == std::optional<std::string>("text"));
  REQUIRE(value.plugin_content.empty());
  REQUIRE(value.tensor.has_value());
  REQUIRE(required_field(*value.tensor, 1).number_bits == 7);  // DT_STRING
  const auto dims = fields_numbered(required_field(*value.tensor, 2).bytes, 2);
  REQUIRE(dims.size() == 1);
  REQUIRE(required_field(dims[0].bytes, 1).number_bits == 1);
  return required_field(*value.tensor, 8).bytes;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// A training run without a Trainer: arguments, state and a handler holding the callbacks under test.
struct Run {
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  CallbackHandler handler;

  explicit Run(const fs::path& logging_dir) {
    args.output_dir = (logging_dir.parent_path() / "out").string();
    args.logging_dir = logging_dir.string();
  }
  void train_begin() { handler.on_train_begin(args, state, control); }
  void log(int64_t step, const Logs& logs) {
    state.global_step = step;
    handler.on_log(args, state, control, logs);
  }
  void train_end() { handler.on_train_end(args, state, control); }
};

// Records the events it sees, to show that callbacks after a failed tracker still run.
struct Recorder : TrainerCallback {
  std::vector<std::string> seen;
  void on_train_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    seen.push_back("train_begin");
  }
  void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    seen.push_back("log");
  }
};

}  // namespace

TEST_CASE("the reference CRC-32C and the library's agree with the published check values", "[tensorboard]") {
  const std::string digits = "123456789";
  const std::string zeros(32, '\0');
  const std::string ones(32, '\xFF');
  CHECK(reference_crc32c(digits) == 0xE3069283U);
  CHECK(reference_crc32c(zeros) == 0x8A9136AAU);
  CHECK(reference_crc32c(ones) == 0x62A8AB43U);
  CHECK(torchfit::detail::crc32c(digits) == 0xE3069283U);
  CHECK(torchfit::detail::crc32c(zeros) == 0x8A9136AAU);
  CHECK(torchfit::detail::crc32c(ones) == 0x62A8AB43U);
  // Masked values from TensorBoard's RustBoard documentation.
  CHECK(torchfit::detail::masked_crc32c(std::string("\x1a\x11"
                                                    "CRC test, one two",
                                                    19)) == 0x5794D08AU);
  CHECK(torchfit::detail::masked_crc32c(std::string("\x18\0\0\0\0\0\0\0", 8)) == 0x224B7FA3U);
}

TEST_CASE("the file_version record is byte-exact TFRecord framing of Event{wall_time, file_version}",
          "[tensorboard]") {
  const std::string payload(
      "\x09\x00\x00\x80\x38\x99\xd6\xd7\x41\x1a\x0d"
      "brain.Event:2",
      24);
  CHECK(torchfit::detail::tensorboard::file_version_event(1599759586.0) == payload);
  const std::string expected = std::string(
                                   "\x18\0\0\0\0\0\0\0"
                                   "\xa3\x7f\x4b\x22",
                                   12) +
                               payload + "\x12\x4b\x36\xab";
  CHECK(torchfit::detail::tfrecord(payload) == expected);
}

TEST_CASE("TensorBoardCallback writes args, hparams, scalars and text that an independent reader decodes",
          "[tensorboard]") {
  TempDir tmp;
  Run run(tmp / "runs" / "exp");
  run.args.learning_rate = 0.001;
  run.args.run_name = std::nullopt;
  auto tb = run.handler.add_callback<TensorBoardCallback>();
  CHECK(run.handler.events_of(0) ==
        (event_bit(Event::train_begin) | event_bit(Event::log) | event_bit(Event::train_end)));

  const double before = torchfit::detail::unix_time_now();
  run.train_begin();
  const fs::path file = tb->event_file();
  REQUIRE(file.parent_path() == tmp / "runs" / "exp");
  const std::regex name_pattern("events\\.out\\.tfevents\\.\\d{10}\\." + torchfit::detail::host_name() +
                                "\\." + std::to_string(::getpid()) + "\\.\\d+");
  CHECK(std::regex_match(file.filename().string(), name_pattern));

  const Logs train_logs = {{"loss", 0.5},   {"grad_norm", 1.25}, {"learning_rate", 5e-05},
                           {"epoch", 0.25}, {"num_tokens", 7},   {"converged", true}};
  run.log(10, train_logs);
  // Each on_log reaches the operating system: the point is readable before the file is closed.
  REQUIRE(read_events(file).size() == 3);
  run.log(20, {{"eval_loss", 0.75}, {"eval_runtime", 0.125}, {"test_acc", 0.875}, {"epoch", 0.5}});
  run.log(20, {{"note", "hello **world**"}, {"empty", ""}});
  run.train_end();
  const double after = torchfit::detail::unix_time_now();
  CHECK(tb->event_file().empty());

  REQUIRE(event_files(file.parent_path()) == std::vector<fs::path>{file});
  const auto events = read_events(file);
  REQUIRE(events.size() == 6);
  for (const auto& e : events) {
    CHECK(e.wall_time >= before);
    CHECK(e.wall_time <= after);
  }

  SECTION("the first event is the file version") {
    CHECK(events[0].file_version == std::optional<std::string>("brain.Event:2"));
    CHECK(events[0].values.empty());
    CHECK(file.filename().string().find(fmt::format("{:010d}", static_cast<int64_t>(events[0].wall_time))) !=
          std::string::npos);
  }

  SECTION("on_train_begin: the arguments as text and as an HParams session start") {
    const auto& e = events[1];
    CHECK(e.step == 0);
    REQUIRE(e.values.size() == 2);
    CHECK(e.values[0].tag == "args/text_summary");
    CHECK(text_of(e.values[0]) == run.args.to_json_string());

    const auto& start = e.values[1];
    CHECK(start.tag == "_hparams_/session_start_info");
    CHECK(start.plugin_name == std::optional<std::string>("hparams"));
    CHECK_FALSE(field(start.plugin_content, 1).has_value());  // version 0
    const auto info = required_field(start.plugin_content, 3).bytes;
    const double start_time = required_field(info, 5).as_double();
    CHECK(start_time >= before);
    CHECK(start_time <= after);
    // The null tensor tensorboard's own writer puts in hparams values: DT_FLOAT, shape [0].
    REQUIRE(start.tensor.has_value());
    CHECK(required_field(*start.tensor, 1).number_bits == 1);
    const auto dims = fields_numbered(required_field(*start.tensor, 2).bytes, 2);
    REQUIRE(dims.size() == 1);
    CHECK(dims[0].bytes.empty());

    std::map<std::string, Field> hparams;
    for (const auto& entry : fields_numbered(info, 1)) {
      const auto key = required_field(entry.bytes, 1).bytes;
      const auto value_fields = decode(required_field(entry.bytes, 2).bytes);
      REQUIRE(value_fields.size() == 1);
      CHECK(hparams.emplace(key, value_fields[0]).second);
    }
    const json args = run.args.to_json();
    size_t expected_count = 0;
    for (auto it = args.begin(); it != args.end(); ++it) {
      INFO(it.key());
      if (it.value().is_null()) {
        CHECK(hparams.count(it.key()) == 0);
        continue;
      }
      ++expected_count;
      REQUIRE(hparams.count(it.key()) == 1);
      const Field& v = hparams.at(it.key());
      if (it.value().is_boolean()) {
        CHECK(v.number == 4);
        CHECK(v.number_bits == (it.value().get<bool>() ? 1U : 0U));
      } else if (it.value().is_number()) {
        CHECK(v.number == 2);
        CHECK(v.as_double() == it.value().get<double>());
      } else {
        CHECK(v.number == 3);
        CHECK(v.bytes == (it.value().is_string() ? it.value().get<std::string>() : it.value().dump()));
      }
    }
    CHECK(hparams.size() == expected_count);
    CHECK(hparams.at("learning_rate").as_double() == 0.001);
    CHECK(hparams.at("output_dir").bytes == run.args.output_dir);
    CHECK(hparams.at("fp16").number == 4);
  }

  SECTION("on_log: every number as a float32 scalar at the global step, tags rewritten as HF does") {
    const auto& e = events[2];
    CHECK(e.step == 10);
    REQUIRE(e.values.size() == 6);
    const std::vector<std::pair<std::string, float>> expected = {
        {"train/loss", 0.5F},   {"train/grad_norm", 1.25F}, {"train/learning_rate", 5e-05F},
        {"train/epoch", 0.25F}, {"train/num_tokens", 7.0F}, {"train/converged", 1.0F}};
    for (size_t i = 0; i < expected.size(); ++i) {
      CHECK(e.values[i].tag == expected[i].first);
      CHECK(e.values[i].simple_value == std::optional<float>(expected[i].second));
      CHECK_FALSE(e.values[i].plugin_name.has_value());
      CHECK_FALSE(e.values[i].tensor.has_value());
    }
    const auto& eval = events[3];
    CHECK(eval.step == 20);
    REQUIRE(eval.values.size() == 4);
    CHECK(eval.values[0].tag == "eval/loss");
    CHECK(eval.values[0].simple_value == std::optional<float>(0.75F));
    CHECK(eval.values[1].tag == "eval/runtime");
    CHECK(eval.values[2].tag == "test/acc");
    CHECK(eval.values[2].simple_value == std::optional<float>(0.875F));
    CHECK(eval.values[3].tag == "train/epoch");
  }

  SECTION("on_log: strings as text summaries tagged <tag>/text_summary") {
    const auto& e = events[4];
    CHECK(e.step == 20);
    REQUIRE(e.values.size() == 2);
    CHECK(e.values[0].tag == "train/note/text_summary");
    CHECK(text_of(e.values[0]) == "hello **world**");
    CHECK(e.values[1].tag == "train/empty/text_summary");
    CHECK(text_of(e.values[1]).empty());
  }

  SECTION("on_train_end: the HParams session ends with status SUCCESS") {
    const auto& e = events[5];
    CHECK(e.step == 20);
    REQUIRE(e.values.size() == 1);
    CHECK(e.values[0].tag == "_hparams_/session_end_info");
    CHECK(e.values[0].plugin_name == std::optional<std::string>("hparams"));
    const auto info = required_field(e.values[0].plugin_content, 4).bytes;
    CHECK(required_field(info, 1).number_bits == 1);
    CHECK(required_field(info, 2).as_double() >= before);
  }
}

TEST_CASE("hyper-parameters: numbers, strings and booleans typed, lists as JSON text, nulls left out",
          "[tensorboard]") {
  const json hparams = {{"lr", 0.001},   {"steps", 100},    {"name", "run-1"},
                        {"fp16", false}, {"seed", nullptr}, {"report_to", json::array({"csv", "jsonl"})}};
  const auto value = torchfit::detail::tensorboard::session_start_value(hparams, 1700000000.5);
  const auto tag = required_field(value.bytes(), 1).bytes;
  CHECK(tag == "_hparams_/session_start_info");
  const auto plugin_data = required_field(required_field(value.bytes(), 9).bytes, 1).bytes;
  CHECK(required_field(plugin_data, 1).bytes == "hparams");
  const auto info = required_field(required_field(plugin_data, 2).bytes, 3).bytes;
  CHECK(required_field(info, 5).as_double() == 1700000000.5);
  std::vector<std::pair<std::string, Field>> entries;
  for (const auto& entry : fields_numbered(info, 1)) {
    const auto v = decode(required_field(entry.bytes, 2).bytes);
    REQUIRE(v.size() == 1);
    entries.emplace_back(required_field(entry.bytes, 1).bytes, v[0]);
  }
  REQUIRE(entries.size() == 5);
  CHECK(entries[0].first == "lr");
  CHECK(entries[0].second.number == 2);
  CHECK(entries[0].second.as_double() == 0.001);
  CHECK(entries[1].first == "steps");
  CHECK(entries[1].second.as_double() == 100.0);
  CHECK(entries[2].first == "name");
  CHECK(entries[2].second.number == 3);
  CHECK(entries[2].second.bytes == "run-1");
  CHECK(entries[3].first == "fp16");
  CHECK(entries[3].second.number == 4);
  CHECK(entries[3].second.wire_type == 0);
  CHECK(entries[3].second.number_bits == 0);
  CHECK(entries[4].first == "report_to");
  CHECK(entries[4].second.bytes == "[\"csv\",\"jsonl\"]");
}

TEST_CASE("values that are neither numbers nor strings are dropped with a warning", "[tensorboard]") {
  TempDir tmp;
  Run run(tmp / "tb");
  auto tb = run.handler.add_callback<TensorBoardCallback>();
  CaptureLog log;
  run.log(3, {{"loss", 0.5}, {"shape", json::array({1, 2})}, {"nothing", nullptr}});
  CHECK(log.text() ==
        "[torchfit] warning: TensorBoardCallback: dropping log value \"shape\" = [1,2]: only numbers and "
        "strings "
        "can be logged\n"
        "[torchfit] warning: TensorBoardCallback: dropping log value \"nothing\" = null: only numbers and "
        "strings "
        "can be logged\n");
  const auto events = read_events(tb->event_file());
  REQUIRE(events.size() == 2);
  REQUIRE(events[1].values.size() == 1);
  CHECK(events[1].values[0].tag == "train/loss");
}

TEST_CASE("a file cut inside its last record still yields every complete record", "[tensorboard]") {
  TempDir tmp;
  Run run(tmp / "tb");
  auto tb = run.handler.add_callback<TensorBoardCallback>();
  run.log(1, {{"loss", 1.0}});
  run.log(2, {{"loss", 0.5}, {"note", "a longer text value so the record has some length"}});
  const auto bytes = test::read_file(tb->event_file());
  const auto whole = read_tfrecords(bytes);
  REQUIRE(whole.payloads.size() == 3);
  REQUIRE_FALSE(whole.truncated_tail);
  const size_t last_record = 2 * 16 + whole.payloads[0].size() + whole.payloads[1].size();
  REQUIRE(bytes.size() == last_record + 16 + whole.payloads[2].size());
  for (size_t cut = last_record + 1; cut < bytes.size(); ++cut) {
    INFO("cut at " << cut);
    const auto partial = read_tfrecords(bytes.substr(0, cut));
    CHECK(partial.truncated_tail);
    CHECK(partial.payloads == std::vector<std::string>(whole.payloads.begin(), whole.payloads.begin() + 2));
  }
}

TEST_CASE("an evaluation before training opens the file lazily and a resumed run adds a new file",
          "[tensorboard]") {
  TempDir tmp;
  const fs::path dir = tmp / "runs" / "same";
  fs::path first_file;
  {
    Run run(dir);
    auto tb = run.handler.add_callback<TensorBoardCallback>();
    run.log(0, {{"eval_loss", 2.0}});  // HF: on_log opens the writer when on_train_begin has not
    first_file = tb->event_file();
    run.train_begin();
    CHECK(tb->event_file() == first_file);
    run.log(5, {{"loss", 1.5}});
  }  // interrupted: no on_train_end
  Run resumed(dir);
  resumed.state.global_step = 5;
  auto tb = resumed.handler.add_callback<TensorBoardCallback>();
  resumed.train_begin();
  resumed.log(6, {{"loss", 1.25}});
  resumed.train_end();

  const auto files = event_files(dir);
  REQUIRE(files.size() == 2);
  CHECK(std::find(files.begin(), files.end(), first_file) != files.end());
  const auto first = read_events(first_file);
  REQUIRE(first.size() == 4);
  CHECK(first[1].values.at(0).tag == "eval/loss");
  CHECK(first[3].step == 5);
  const fs::path second_file = files[0] == first_file ? files[1] : files[0];
  const auto second = read_events(second_file);
  REQUIRE(second.size() == 4);
  CHECK(second[0].file_version == std::optional<std::string>("brain.Event:2"));
  CHECK(second[2].step == 6);
  CHECK(second[2].values.at(0).simple_value == std::optional<float>(1.25F));
}

TEST_CASE("the log directory: constructor over TENSORBOARD_LOGGING_DIR over args.logging_dir",
          "[tensorboard]") {
  TempDir tmp;
  Run run(tmp / "from_args");
  SECTION("args.logging_dir") {
    TensorBoardCallback tb;
    CHECK(tb.log_dir(run.args) == tmp / "from_args");
  }
  SECTION("TENSORBOARD_LOGGING_DIR, ~ expanded") {
    ScopedEnv home("HOME", tmp.path().string());
    ScopedEnv env("TENSORBOARD_LOGGING_DIR", "~/from_env");
    auto tb = run.handler.add_callback<TensorBoardCallback>();
    run.log(1, {{"loss", 1.0}});
    CHECK(tb->event_file().parent_path() == tmp / "from_env");
    CHECK(read_events(tb->event_file()).size() == 2);
  }
  SECTION("the constructor") {
    ScopedEnv env("TENSORBOARD_LOGGING_DIR", (tmp / "from_env").string());
    TensorBoardCallback tb(TensorBoardOptions{tmp / "from_ctor"});
    CHECK(tb.log_dir(run.args) == tmp / "from_ctor");
  }
  SECTION("none: an error saying how to set one") {
    run.args.logging_dir.clear();
    TensorBoardCallback tb;
    CHECK_THROWS_WITH(tb.log_dir(run.args),
                      "no TensorBoard log directory: --logging_dir is empty; call "
                      "TrainingArguments::validate() (which sets "
                      "it to <output_dir>/runs/<date>_<host>) or pass a directory to the constructor");
  }
}

TEST_CASE("only the world process zero writes", "[tensorboard]") {
  TempDir tmp;
  Run run(tmp / "tb");
  run.state.is_world_process_zero = false;
  auto tb = run.handler.add_callback<TensorBoardCallback>();
  run.train_begin();
  run.log(1, {{"loss", 1.0}});
  run.train_end();
  CHECK_FALSE(fs::exists(tmp / "tb"));
}

TEST_CASE(
    "an unwritable logging dir disables the tracker with one warning naming the cause, training goes on",
    "[tensorboard]") {
  TempDir tmp;
  fs::path dir;
  std::string expected_start;
  std::string expected_end;
  SECTION("a directory that cannot be created") {
    test::write_file(tmp / "blocker", "a file where a directory should be");
    dir = tmp / "blocker" / "runs";
    expected_start = "cannot create the TensorBoard log directory " + dir.string() + ": ";
    expected_end = "Not a directory\n";
  }
  SECTION("a directory where no file can be created") {
    // Permissions do not stop root; no one can create files in /proc.
    if (::geteuid() == 0) {
      dir = "/proc/self";
      expected_end = std::string(": ") + std::strerror(ENOENT) + "\n";
    } else {
      dir = tmp / "read-only";
      fs::create_directories(dir);
      fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
      expected_end = std::string(": ") + std::strerror(EACCES) + "\n";
    }
    expected_start = "cannot create the TensorBoard event file " + (dir / "events.out.tfevents.").string();
  }
  Run run(dir);
  run.handler.add_callback<TensorBoardCallback>();
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  run.train_begin();
  run.log(1, {{"loss", 1.0}});
  run.log(2, {{"loss", 0.5}});
  run.train_end();

  const std::string text = log.text();
  INFO(text);
  CHECK(
      text.rfind("[torchfit] warning: TensorBoardCallback failed and is disabled for the rest of this run: " +
                     expected_start,
                 0) == 0);
  CHECK(text.size() >= expected_end.size());
  CHECK(text.substr(text.size() - expected_end.size()) == expected_end);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  CHECK(run.handler.callback_list() == "Recorder");
  CHECK(recorder->seen == std::vector<std::string>{"train_begin", "log", "log"});
}

TEST_CASE("report_to \"tensorboard\" adds TensorBoardCallback", "[tensorboard]") {
  CallbackHandler handler;
  integrations::add_reporting_callbacks(handler, {"tensorboard"});
  CHECK(handler.callback_list() == "TensorBoardCallback");
}

TEST_CASE("a Trainer run's TensorBoard series equal its log_history at the same steps",
          "[tensorboard][trainer]") {
  TempDir dir;
  TrainingArguments args;
  args.output_dir = dir.path().string();
  args.logging_dir = (dir / "runs").string();
  args.report_to = {"tensorboard", "csv"};
  args.per_device_train_batch_size = 8;
  args.max_steps = 12;
  args.logging_steps = 4;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 6;
  args.save_strategy = SaveStrategy::no;
  args.disable_tqdm = true;
  torch::manual_seed(0);
  auto x = torch::randn({64, 4});
  auto y = (x.sum(1) > 0).to(torch::kLong);
  auto loss_fn = [](test::Mlp& m, const torch::data::Example<>& b) {
    auto logits = m->forward(b.data);
    return LossOutput{torch::cross_entropy_loss(logits, b.target), logits, b.target};
  };
  auto accuracy = [](const EvalPrediction& p) {
    return Logs{
        {"accuracy", p.predictions.argmax(1).eq(p.label_ids).to(torch::kDouble).mean().item<double>()}};
  };
  Trainer trainer(test::Mlp(4, 16, 2), args, std::make_pair(x, y),
                  std::make_pair(x.slice(0, 0, 16), y.slice(0, 0, 16)), loss_fn, accuracy);
  trainer.remove_callback<PrinterCallback>();
  trainer.train();

  const auto files = event_files(dir / "runs");
  REQUIRE(files.size() == 1);
  std::map<std::string, std::map<int64_t, float>> series;
  for (const auto& event : read_events(files[0]))  // read_events checks every record's CRCs
    for (const auto& v : event.values)
      if (v.simple_value) series[v.tag][event.step] = *v.simple_value;

  std::size_t compared = 0;
  for (const auto& entry : trainer.state().log_history) {
    const int64_t step = entry.at("step").get<int64_t>();
    for (const auto& [key, tag] : std::map<std::string, std::string>{{"loss", "train/loss"},
                                                                     {"learning_rate", "train/learning_rate"},
                                                                     {"grad_norm", "train/grad_norm"},
                                                                     {"eval_loss", "eval/loss"},
                                                                     {"eval_accuracy", "eval/accuracy"}}) {
      if (!entry.contains(key)) continue;
      INFO(tag << " at step " << step);
      REQUIRE(series[tag].count(step) == 1);
      CHECK(series[tag][step] == static_cast<float>(entry.at(key).get<double>()));
      ++compared;
    }
  }
  CHECK(compared == 3 * 3 + 2 * 2);  // train logs at 4, 8, 12; evaluations at 6, 12
  CHECK(fs::exists(dir / "logs.csv"));
}
