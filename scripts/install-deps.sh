#!/usr/bin/env bash
# Installs the Debian 12 packages torchfit's build, tests and examples need (with sudo unless already root).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends \
  g++ cmake make libtorch-dev libopenblas0-pthread nlohmann-json3-dev libfmt-dev catch2 \
  zlib1g-dev libsqlite3-dev libcurl4-openssl-dev libcsv-dev libgloo-dev ccache python3 >/dev/null
