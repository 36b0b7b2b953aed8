#!/bin/bash
# Runs bench/hf_side_by_side.py: the MLP workload of bench/trainer_overhead through torchfit (libtorch 2.6), Hugging
# Face's real Trainer (transformers 4.57.1 on python3-torch 2.6) and a plain PyTorch loop, alternating repetitions,
# in the Debian 13 chroot of scripts/debian13-chroot.sh (needs root). The first run installs transformers,
# accelerate and huggingface_hub from git mirrors: set TRANSFORMERS_GIT, ACCELERATE_GIT and HF_HUB_GIT (see that
# script's header). The C++ benchmark is built optimised in build-bench-libtorch2/.
#
#   scripts/hf-side-by-side.sh [--reps N]
#
# All paths run with one thread and the same malloc settings as torchfit::tune_cpu_allocator() (set through
# glibc's environment, so the Python processes get them too).
set -euo pipefail
scripts=$(cd "$(dirname "$0")" && pwd)
cd "$scripts/.."
"$scripts/debian13-chroot.sh" hf
"$scripts/debian13-chroot.sh" run sh -c '
  cmake -S . -B build-bench-libtorch2 -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DTORCHFIT_BUILD_TESTS=OFF -DTORCHFIT_BUILD_EXAMPLES=OFF >/dev/null &&
  cmake --build build-bench-libtorch2 --target trainer_overhead -j"$(nproc)" >/dev/null &&
  MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \
    hf-python bench/hf_side_by_side.py --trainer-overhead build-bench-libtorch2/bench/trainer_overhead "$@"' sh "$@"
