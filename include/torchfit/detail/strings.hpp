// SPDX-License-Identifier: MIT
// Small text helpers shared by the argument parser and the trackers.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace torchfit::detail {

/// `text` in ASCII lower case.
inline std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

/// `text` without the blanks (spaces, tabs, carriage returns) at either end.
inline std::string trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  return std::string(text.substr(first, text.find_last_not_of(" \t\r") - first + 1));
}

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace torchfit::detail
