#!/bin/bash
# Builds and runs the whole test suite against libtorch 2.6, Catch2 3 and fmt 10 (Debian 13) on a Debian 12 host,
# inside the chroot that scripts/debian13-chroot.sh sets up (about 3 minutes the first time; needs root).
# The build tree is build-libtorch2/ in this checkout; arguments go to ctest (e.g. -R test_unit). The build keeps
# going past a target that fails, and ctest runs what was built; the exit status is non-zero if either failed.
#
#   scripts/test-libtorch2.sh [ctest arguments...]      JOBS=N sets the build's and ctest's parallelism
set -euo pipefail
scripts=$(cd "$(dirname "$0")" && pwd)
cd "$scripts/.."
"$scripts/debian13-chroot.sh" setup
"$scripts/debian13-chroot.sh" run sh -c '
  jobs=${JOBS:-$(nproc)}
  cmake -S . -B build-libtorch2 -G "Unix Makefiles" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DTORCHFIT_WERROR=ON >/dev/null
  cmake --build build-libtorch2 -j"$jobs" -- -k; built=$?
  cd build-libtorch2 && ctest --output-on-failure -j"$jobs" "$@" && exit $built' sh "$@"
