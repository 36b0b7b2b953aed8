// SPDX-License-Identifier: MIT
#pragma once

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/console.hpp"

namespace torchfit::log {

/// Severity of a library message; the threshold comes from TORCHFIT_VERBOSITY (default: notice). `notice` is
/// for the few events of a run a user needs to see without asking (early stopping's reason, the best model
/// loaded).
enum class Level { debug = 0, info = 1, notice = 2, warning = 3, error = 4 };

namespace detail {

inline Level level_from_env() {
  const char* v = std::getenv("TORCHFIT_VERBOSITY");
  if (v == nullptr) return Level::notice;
  if (std::strcmp(v, "debug") == 0) return Level::debug;
  if (std::strcmp(v, "info") == 0) return Level::info;
  if (std::strcmp(v, "warning") == 0) return Level::warning;
  if (std::strcmp(v, "error") == 0) return Level::error;
  return Level::notice;
}

struct Sink {
  Level level = level_from_env();
  std::ostream* stream = &std::cerr;
  std::set<std::string> warned;  // warning_once's messages so far, guarded by the console's mutex
};

inline Sink& sink() {
  static Sink s;
  return s;
}

// Above a progress bar being drawn, if any (the bar is cleared and redrawn around the message).
inline void write(Level level, std::string_view tag, std::string_view message) {
  Sink& s = sink();
  if (level < s.level) return;
  torchfit::detail::print_line(*s.stream, "[torchfit] " + std::string(tag) + std::string(message));
}

inline bool first_time(const std::string& message) {
  std::lock_guard<std::mutex> lock(torchfit::detail::console().mutex);
  return sink().warned.insert(message).second;
}

}  // namespace detail

/// Sets the minimum level printed (overrides TORCHFIT_VERBOSITY).
inline void set_level(Level level) { detail::sink().level = level; }
inline Level level() { return detail::sink().level; }

/// Redirects library messages (default std::cerr); returns the previous stream. Tests capture warnings this way.
inline std::ostream* set_stream(std::ostream* stream) { return std::exchange(detail::sink().stream, stream); }

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::debug, "debug: ", fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::info, "", fmt::format(f, std::forward<Args>(args)...));
}
/// Shown by default, untagged: what a user should see without asking.
template <typename... Args>
void notice(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::notice, "", fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::warning, "warning: ", fmt::format(f, std::forward<Args>(args)...));
}
/// A warning printed only the first time this exact message comes up in the process (HF's warning_once).
template <typename... Args>
void warning_once(fmt::format_string<Args...> f, Args&&... args) {
  if (level() > Level::warning) return;
  const std::string message = fmt::format(f, std::forward<Args>(args)...);
  if (detail::first_time(message)) detail::write(Level::warning, "warning: ", message);
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::error, "error: ", fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace torchfit::log
