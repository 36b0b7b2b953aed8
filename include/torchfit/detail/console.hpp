// SPDX-License-Identifier: MIT
// The terminal line a progress bar redraws in place, and printing whole lines around it (tqdm's write).
#pragma once

#include <mutex>
#include <ostream>
#include <string_view>

namespace torchfit::detail {

/// A line redrawn in place at the bottom of the terminal (ProgressCallback's bar). Lines printed while it is
/// live go above it: it is cleared first and drawn again after. Both are called with console().mutex held.
class LiveLine {
 public:
  virtual ~LiveLine() = default;
  /// Erases the line, leaving the cursor at its start.
  virtual void clear() = 0;
  /// Draws the line again.
  virtual void redraw() = 0;
};

struct Console {
  std::mutex mutex;  // held while a line, the live line or a library message is written
  LiveLine* live = nullptr;
};

inline Console& console() {
  static Console c;
  return c;
}

/// Writes `text` and a newline to `out`, above the live line if there is one; safe from any thread.
inline void print_line(std::ostream& out, std::string_view text) {
  Console& c = console();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.live != nullptr) c.live->clear();
  out << text << '\n' << std::flush;
  if (c.live != nullptr) c.live->redraw();
}

}  // namespace torchfit::detail
