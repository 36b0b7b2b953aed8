// SPDX-License-Identifier: MIT
#pragma once

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace torchfit::log {

/// Severity of a library message; the threshold comes from TORCHFIT_VERBOSITY (default: warning).
enum class Level { debug = 0, info = 1, warning = 2, error = 3 };

namespace detail {

inline Level level_from_env() {
  const char* v = std::getenv("TORCHFIT_VERBOSITY");
  if (v == nullptr) return Level::warning;
  if (std::strcmp(v, "debug") == 0) return Level::debug;
  if (std::strcmp(v, "info") == 0) return Level::info;
  if (std::strcmp(v, "error") == 0) return Level::error;
  return Level::warning;
}

struct Sink {
  Level level = level_from_env();
  std::ostream* stream = &std::cerr;
  std::mutex mutex;
};

inline Sink& sink() {
  static Sink s;
  return s;
}

inline void write(Level level, std::string_view tag, std::string_view message) {
  Sink& s = sink();
  if (level < s.level) return;
  std::lock_guard<std::mutex> lock(s.mutex);
  *s.stream << "[torchfit] " << tag << message << '\n';
  s.stream->flush();
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
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::warning, "warning: ", fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  detail::write(Level::error, "error: ", fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace torchfit::log
