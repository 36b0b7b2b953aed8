// SPDX-License-Identifier: MIT
// Catch2 v3 under v2's single-header name, with the v2 spellings the tests use, so the same test sources build
// with Catch2 2.13 (Debian 12) and 3.x (Debian 13). tests/CMakeLists.txt puts this directory first on the
// include path only when it finds Catch2 v3.
#pragma once

#include <string>

#include <catch2/catch_all.hpp>

using Catch::Approx;  // v2 declares Approx at global scope

namespace Catch {

// v2 brings its string matchers into namespace Catch. v3's Matchers::Contains matches an element of a range;
// v2's Contains is v3's ContainsSubstring.
inline Matchers::StringContainsMatcher Contains(const std::string& substring,
                                                CaseSensitive case_sensitivity = CaseSensitive::Yes) {
  return Matchers::ContainsSubstring(substring, case_sensitivity);
}
using Matchers::EndsWith;
using Matchers::StartsWith;

}  // namespace Catch
