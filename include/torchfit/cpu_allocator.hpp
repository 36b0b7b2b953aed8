// SPDX-License-Identifier: MIT
// A setting of glibc's malloc for CPU training: keep freed tensor buffers in the process. The Trainer applies it
// when it trains on the CPU, unless --tune_cpu_allocator false.
#pragma once

#include <cstdlib>
#include <string_view>

#include "torchfit/log.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace torchfit {

/// Makes glibc's malloc keep large freed blocks (up to 32 MiB each, 256 MiB free in all) in the process
/// instead of handing them back to the kernel. By default glibc returns and re-maps such blocks depending on
/// where they lie in the heap, and a CPU training step that frees and re-allocates its gradient and
/// activation buffers then page-faults them back in every step: on an MLP 784-256-256-10 with batch 64,
/// about 360 page faults a step, a 2.0 ms step instead of 1.25 ms (bench/trainer_overhead). The process keeps
/// up to that much freed memory for reuse.
///
/// Process-wide: the Trainer calls it for CPU training (see detail::tune_cpu_allocator_for_training); a program
/// that trains on the CPU without the Trainer calls it once at start. Returns false and changes nothing where
/// malloc is not glibc's, or where the user has already configured it (`GLIBC_TUNABLES` naming a `glibc.malloc.`
/// tunable, or `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` set).
inline bool tune_cpu_allocator() {
#if defined(__GLIBC__)
  if (const char* tunables = std::getenv("GLIBC_TUNABLES");
      tunables != nullptr && std::string_view(tunables).find("glibc.malloc.") != std::string_view::npos)
    return false;
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr)
    return false;
  // 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems; fixing it also stops glibc from
  // adjusting it, and the trim threshold with it.
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
#else
  return false;
#endif
}

namespace detail {

/// tune_cpu_allocator() for the Trainer's CPU training, once per process, saying so in one info line. With
/// glibc's defaults the MLP benchmark's steps page-faulted 360 times each and ran 1.3x to 4x slower (README,
/// Performance).
inline void tune_cpu_allocator_for_training() {
  static const bool tuned = [] {
    const bool changed = tune_cpu_allocator();
    if (changed)
      log::info(
          "CPU training: glibc's malloc now keeps freed buffers of up to 32 MiB for reuse instead of "
          "returning them to the kernel (--tune_cpu_allocator false keeps its defaults)");
    return changed;
  }();
  static_cast<void>(tuned);
}

}  // namespace detail
}  // namespace torchfit
