#!/usr/bin/env bash
# Checks that every C++ file of the project follows .clang-format, as clang-format 14 (Debian 12's) lays it out;
# prints the offending lines. Exits 77, which CTest reports as skipped, where clang-format-14 is not installed:
# other versions lay out some constructs differently.
#
#   scripts/check-format.sh          check        scripts/check-format.sh --fix     reformat in place
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format-14 >/dev/null; then
  echo "clang-format-14 is not installed (scripts/install-deps.sh installs it): format not checked"
  exit 77
fi
mapfile -t files < <(find include tests examples bench \( -name '*.hpp' -o -name '*.cpp' -o -name '*.h' \) | sort)
if [ "${1:-}" = --fix ]; then
  clang-format-14 -i "${files[@]}"
else
  clang-format-14 --dry-run --Werror "${files[@]}"
fi
