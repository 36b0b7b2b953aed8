#!/usr/bin/env bash
# Builds torchfit's tests, examples and benchmarks and runs the whole test suite (unit, examples, packaging).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TORCHFIT_BUILD_DIR:-build-tests}  # apart from the README's Release build in build/
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# No optimisation: the tests spend their time in libtorch, and unoptimised builds compile much faster.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE= -DTORCHFIT_WERROR="${TORCHFIT_WERROR:-OFF}" "${launcher[@]}"
cmake --build "$build" -j"$(nproc)"
cd "$build" && ctest --output-on-failure -j"$(nproc)"
