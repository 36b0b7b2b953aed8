// SPDX-License-Identifier: MIT
// Argument structs described once (ArgumentFields) and parsed together from the command line or JSON
// (ArgumentParser, HF's HfArgumentParser): TrainingArguments and a program's own.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/arg_parse.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/type_name.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit {

namespace detail {

/// Integers other than int64_t (int, unsigned, ...): read as int64_t, then range-checked.
template <class T>
struct Codec<
    T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, int64_t>>> {
  using value_type = T;
  static std::string type() { return "int"; }
  static T parse(std::string_view where, const std::string& text) {
    return narrow(where, Codec<int64_t>::parse(where, text), as_literal(text));
  }
  static json to_json(T value) { return value; }
  static T from_json(std::string_view where, const json& j) {
    return narrow(where, Codec<int64_t>::from_json(where, j), j.dump());
  }

 private:
  static T narrow(std::string_view where, int64_t value, const std::string& shown) {
    constexpr auto lowest = std::numeric_limits<T>::min();
    constexpr auto highest = std::numeric_limits<T>::max();
    bool fits = false;
    if constexpr (std::is_signed_v<T>)
      fits = value >= lowest && value <= highest;
    else
      fits = value >= 0 && static_cast<uint64_t>(value) <= highest;
    if (!fits) bad_value(where, fmt::format("an integer in [{}, {}]", lowest, highest), shown);
    return static_cast<T>(value);
  }
};

/// float, read as a double.
template <>
struct Codec<float> {
  using value_type = float;
  static std::string type() { return "float"; }
  static float parse(std::string_view where, const std::string& text) {
    return static_cast<float>(Codec<double>::parse(where, text));
  }
  static json to_json(float value) { return static_cast<double>(value); }
  static float from_json(std::string_view where, const json& j) {
    return static_cast<float>(Codec<double>::from_json(where, j));
  }
};

/// What the parser needs to know of a field, whichever struct it belongs to.
struct FieldInfo {
  std::string name;
  std::string section;
  std::string help;
  std::string type;
  bool flag = false;      // bool or optional<bool>: `--name` alone means true
  bool optional = false;  // accepts none / null
};

template <class T, class = void>
struct has_validate : std::false_type {};
template <class T>
struct has_validate<T, std::void_t<decltype(std::declval<T&>().validate())>> : std::true_type {};

}  // namespace detail

/// One field of an argument struct `S`: its flag name, topic, help, and how its value travels between
/// command-line text, JSON and `S`.
template <class S>
struct ArgumentField : detail::FieldInfo {
  std::function<void(S&, std::string_view where, const std::string& text)> parse;
  std::function<json(const S&)> get;
  std::function<void(S&, std::string_view where, const json&)> set;
};

/// The fields of an argument struct, described once: each `add` ties a flag name to a member and its help
/// text; parsing, JSON and `--help` follow from the member's type (bool, integers, float, double,
/// std::string, std::vector<std::string>, json, enums with EnumNames, std::optional of these). A struct makes
/// itself parsable by ArgumentParser with a static `fields()` returning its ArgumentFields:
///
///     struct DataArguments {
///       std::string data_file = "train.csv";
///       int patience = 10;
///       static torchfit::ArgumentFields<DataArguments> fields() {
///         return torchfit::ArgumentFields<DataArguments>("Data")
///             .add("data_file", &DataArguments::data_file, "training data (CSV)")
///             .add("patience", &DataArguments::patience, "evaluations without improvement before stopping");
///       }
///     };
template <class S>
class ArgumentFields {
 public:
  /// `section`: the topic the first fields are listed under in `--help` (default: the struct's name).
  explicit ArgumentFields(std::string section = detail::short_type_name(typeid(S)))
      : section_(std::move(section)) {}

  /// Starts a new topic for the fields added after it.
  ArgumentFields& section(std::string title) {
    section_ = std::move(title);
    return *this;
  }

  /// Adds the field `--name` for `member`. `Codec` overrides the one chosen by the member's type.
  template <class Codec = void, class T>
  ArgumentFields& add(std::string name, T S::*member, std::string help) {
    using Conv = std::conditional_t<std::is_void_v<Codec>, detail::Codec<T>, Codec>;
    static_assert(std::is_same_v<typename Conv::value_type, T>, "codec does not fit the member type");
    ArgumentField<S> field;
    field.name = std::move(name);
    field.section = section_;
    field.help = std::move(help);
    field.type = Conv::type();
    field.flag = std::is_same_v<T, bool> || std::is_same_v<T, std::optional<bool>>;
    field.optional = detail::is_optional_v<T>;
    field.parse = [member](S& s, std::string_view where, const std::string& text) {
      s.*member = Conv::parse(where, text);
    };
    field.get = [member](const S& s) { return Conv::to_json(s.*member); };
    field.set = [member](S& s, std::string_view where, const json& j) {
      s.*member = Conv::from_json(where, j);
    };
    fields_.push_back(std::move(field));
    return *this;
  }

  const std::vector<ArgumentField<S>>& fields() const { return fields_; }

  /// Every field of `value` under its name, in declaration order.
  json to_json(const S& value) const {
    json out = json::object();
    for (const auto& f : fields_) out[f.name] = f.get(value);
    return out;
  }

 private:
  std::string section_;
  std::vector<ArgumentField<S>> fields_;
};

/// Parses the command line (or a JSON object) into several argument structs at once, as HF's
/// `HfArgumentParser((ModelArguments, TrainingArguments))`: one `--help` lists the fields of all of them,
/// each flag goes to the struct that declares it, and an unknown flag is an error with a "did you mean"
/// suggestion.
///
///     torchfit::TrainingArguments defaults;  // the program's defaults; the command line overrides them
///     defaults.learning_rate = 1e-3;
///     auto [data, args] = torchfit::ArgumentParser<DataArguments, torchfit::TrainingArguments>({}, defaults)
///                             .parse(argc, argv);
///
/// Every struct has a static `fields()` (TrainingArguments has one). A struct with a `validate()` member is
/// validated on a copy after parsing: its errors are reported at once, while the values validate() derives
/// (TrainingArguments' logging_dir, eval_steps, greater_is_better, ...) are left unset, to be derived when it
/// runs again (in the Trainer's constructor), so that fields changed after parsing are honoured.
template <class... Structs>
class ArgumentParser {
  static_assert(sizeof...(Structs) > 0, "ArgumentParser needs at least one argument struct");

 public:
  /// The parsed structs, in the order of the template arguments.
  using Values = std::tuple<Structs...>;

  /// Parses into default-constructed structs.
  ArgumentParser() : ArgumentParser(Structs{}...) {}
  /// Parses into copies of `defaults`: their values are the defaults `--help` shows and flags override.
  explicit ArgumentParser(Structs... defaults) : defaults_(std::move(defaults)...) {
    add_entries(std::index_sequence_for<Structs...>{});
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const std::string& name = entries_[i].info.name;
      if (name == "help" || name == "h")
        throw ArgumentError("an argument field cannot be named --" + name + ": it is the help flag");
      for (std::size_t j = 0; j < i; ++j)
        if (entries_[j].info.name == name)
          throw ArgumentError(fmt::format("--{} is declared twice (in \"{}\" and in \"{}\"); rename one",
                                          name, entries_[j].info.section, entries_[i].info.section));
    }
  }

  /// Parses `--name value`, `--name=value`, `--flag [true|false]`, `--no_flag`, `none` for optional fields,
  /// then validates (see the class comment). Unknown flags, stray tokens and bad values throw ArgumentError
  /// naming them. `--help` / `-h` prints help_text() to stdout and exits 0.
  Values parse(int argc, const char* const* argv) const { return parse_tokens(argc, argv, nullptr); }
  Values parse(int argc, char** argv) const { return parse(argc, static_cast<const char* const*>(argv)); }

  /// Like parse, but unknown `--x [value]` tokens and stray tokens are returned in `remaining` (in order)
  /// instead of failing.
  Values parse_known_args(int argc, const char* const* argv, std::vector<std::string>& remaining) const {
    remaining.clear();
    return parse_tokens(argc, argv, &remaining);
  }

  /// The structs from one flat JSON object of fields (HF's parse_dict; missing keys keep the defaults), then
  /// validated as parse() does. Unknown keys and values of the wrong type throw ArgumentError naming the key.
  Values from_json(const json& object) const {
    if (!object.is_object())
      throw ArgumentError(fmt::format("arguments must be a JSON object (got {})", object.type_name()));
    Values values = defaults_;
    for (auto it = object.begin(); it != object.end(); ++it) {
      const Entry* entry = find(it.key());
      if (entry == nullptr)
        throw ArgumentError(
            fmt::format("unknown argument {}{}", detail::as_literal(it.key()), suggestion(it.key(), "")));
      entry->set(values, "field " + detail::as_literal(it.key()), it.value());
    }
    check(values);
    return values;
  }

  /// from_json() of a JSON file (HF's parse_json_file); errors name the file.
  Values load_from_json(const std::filesystem::path& path) const {
    const json object = detail::python_json_load(path);
    try {
      return from_json(object);
    } catch (const ArgumentError& e) {
      throw ArgumentError(path.string() + ": " + e.what());
    }
  }

  /// Usage line and one aligned line per field (flag, type, default, description), grouped by topic.
  std::string help_text(const std::string& program) const {
    std::size_t name_width = 0, type_width = 0, default_width = 0;
    for (const Entry& e : entries_) {
      name_width = std::max(name_width, e.info.name.size() + 2);
      type_width = std::max(type_width, e.info.type.size());
      default_width = std::max(default_width, e.default_text.size());
    }
    std::string out = fmt::format(
        "usage: {} [--help] [--NAME VALUE | --NAME=VALUE]...\n\nA bool flag alone means true, or takes a "
        "value "
        "(--fp16 false); --no_NAME sets it to false.\nOptional values accept none. Training arguments have "
        "Hugging "
        "Face's names; defaults are this program's.\n",
        program);
    std::string section;
    for (const Entry& e : entries_) {
      if (e.info.section != section) out += fmt::format("\n{}:\n", section = e.info.section);
      out += fmt::format("  {:<{}}  {:<{}}  {:<{}}  {}\n", "--" + e.info.name, name_width, e.info.type,
                         type_width, e.default_text, default_width, e.info.help);
    }
    return out;
  }

 private:
  // One field of one of the structs, bound to its place in Values.
  struct Entry {
    detail::FieldInfo info;
    std::string default_text;
    std::function<void(Values&, std::string_view where, const std::string& text)> parse;
    std::function<void(Values&, std::string_view where, const json&)> set;
  };

  template <std::size_t... I>
  void add_entries(std::index_sequence<I...>) {
    (add_struct_entries<I>(), ...);
  }

  template <std::size_t I>
  void add_struct_entries() {
    using S = std::tuple_element_t<I, Values>;
    const auto& table = S::fields();  // a temporary or a static table, alive through the loop
    for (const ArgumentField<S>& field : table.fields()) {
      Entry entry;
      entry.info = field;
      entry.default_text = detail::help_value(field.get(std::get<I>(defaults_)));
      entry.parse = [parse = field.parse](Values& v, std::string_view where, const std::string& text) {
        parse(std::get<I>(v), where, text);
      };
      entry.set = [set = field.set](Values& v, std::string_view where, const json& j) {
        set(std::get<I>(v), where, j);
      };
      entries_.push_back(std::move(entry));
    }
  }

  const Entry* find(std::string_view name) const {
    for (const Entry& e : entries_)
      if (e.info.name == name) return &e;
    return nullptr;
  }

  // " (did you mean --x?)" for a likely typo of a field name, else empty.
  std::string suggestion(std::string_view name, std::string_view prefix) const {
    std::vector<std::string> names;
    for (const Entry& e : entries_) names.push_back(e.info.name);
    const std::string best = detail::closest_name(name, names);
    return best.empty() ? "" : fmt::format(" (did you mean {}{}?)", prefix, best);
  }

  // validate() on copies: its errors now, what it derives later.
  static void check(const Values& values) {
    std::apply([](const auto&... v) { (check_one(v), ...); }, values);
  }
  template <class S>
  static void check_one(const S& value) {
    if constexpr (detail::has_validate<S>::value) S(value).validate();
  }

  Values parse_tokens(int argc, const char* const* argv, std::vector<std::string>* remaining) const {
    Values values = defaults_;
    const auto token = [&](int i) { return std::string(argv[i] != nullptr ? argv[i] : ""); };
    const auto is_flag_token = [](const std::string& t) {
      return t.size() > 2 && t.compare(0, 2, "--") == 0;
    };
    for (int i = 1; i < argc; ++i) {
      const std::string arg = token(i);
      if (arg == "--help" || arg == "-h") {
        const std::string program =
            argc > 0 && argv[0] ? std::filesystem::path(argv[0]).filename().string() : "train";
        std::cout << help_text(program) << std::flush;
        std::exit(0);
      }
      const std::size_t eq = arg.find('=');
      const std::string name = is_flag_token(arg) ? arg.substr(2, eq == std::string::npos ? eq : eq - 2) : "";
      const Entry* field = find(name);
      const Entry* negated = nullptr;  // --no_<bool>, HfArgumentParser's complement flag
      if (field == nullptr && name.compare(0, 3, "no_") == 0)
        if (const Entry* f = find(name.substr(3)); f && f->info.flag && !f->info.optional) negated = f;
      if (field == nullptr && negated == nullptr) {
        if (remaining == nullptr) {
          if (name.empty())
            throw ArgumentError(
                fmt::format("unexpected argument {} (flags are --name value)", detail::as_literal(arg)));
          throw ArgumentError(fmt::format("unknown flag --{}{}; see --help", name, suggestion(name, "--")));
        }
        remaining->push_back(arg);
        if (!name.empty() && eq == std::string::npos && i + 1 < argc && !is_flag_token(token(i + 1)))
          remaining->push_back(token(++i));
        continue;
      }
      const std::string where = "--" + name;
      if (negated != nullptr) {
        detail::require(eq == std::string::npos, "{} takes no value (got {})", where,
                        detail::as_literal(arg.substr(eq + 1)));
        negated->parse(values, where, "false");
        continue;
      }
      std::string value;
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
      } else if (field->info.flag) {
        // As HF's parser: a bool flag takes the next token only if it is a bool word (or none, when
        // optional).
        const bool takes_next = i + 1 < argc && (detail::bool_word(token(i + 1)) ||
                                                 (field->info.optional && detail::none_word(token(i + 1))));
        value = takes_next ? token(++i) : "true";
      } else {
        detail::require(i + 1 < argc && !is_flag_token(token(i + 1)), "{} expects a value ({})", where,
                        field->info.type);
        value = token(++i);
      }
      field->parse(values, where, value);
    }
    check(values);
    return values;
  }

  Values defaults_;
  std::vector<Entry> entries_;
};

}  // namespace torchfit
