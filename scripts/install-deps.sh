#!/usr/bin/env bash
# Installs the Debian 12 packages torchfit's build and examples need (with sudo unless already root); with
# --tests, also what the test suite uses beyond them: torchrun (python3-torch) and clang-format-14.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
packages=(g++ cmake make libtorch-dev libopenblas0-pthread nlohmann-json3-dev libfmt-dev catch2 zlib1g-dev
  libsqlite3-dev libcurl4-openssl-dev libcsv-dev libgloo-dev ccache python3)
case "${1:-}" in
  --tests) packages+=(python3-torch clang-format-14) ;;
  "") ;;
  *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
