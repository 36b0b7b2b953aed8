// SPDX-License-Identifier: MIT
// What torchfit asks of the machine it runs on: the user's home directory and the host's name.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace torchfit::detail {

/// Python's `os.path.expanduser` for a leading `~` or `~/` ($HOME); other paths unchanged.
inline std::string expand_user(const std::string& path) {
  const char* home = std::getenv("HOME");
  if (home == nullptr || path.empty() || path[0] != '~' || (path.size() > 1 && path[1] != '/')) return path;
  return home + path.substr(1);
}

/// This machine's host name ("localhost" if it cannot be read).
inline std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace torchfit::detail
