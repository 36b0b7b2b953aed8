// SPDX-License-Identifier: MIT
// What `report_to` can name: one table of every tracker name, the header that provides it and the
// report_to="all" order, and the registry each included integration header adds its tracker to.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "torchfit/callback_handler.hpp"
#include "torchfit/error.hpp"

namespace torchfit::integrations {

/// A tracker name report_to knows.
struct KnownTracker {
  const char* name;  ///< HF's name for it
  /// The header under <torchfit/integrations/> that provides it; null when torchfit has no such tracker.
  const char* header;
  /// Why torchfit has no such tracker, completing `--report_to: "<name>"`; null when it has one.
  const char* absence;
};

/// Every name report_to knows, in report_to="all" order (HF's, then torchfit's own file trackers).
inline constexpr KnownTracker known_trackers[] = {
    {"azure_ml", "azure_ml.hpp", nullptr},
    {"comet_ml", "comet.hpp", nullptr},
    {"dagshub", "dagshub.hpp", nullptr},
    {"dvclive", "dvclive.hpp", nullptr},
    {"flyte", "flyte.hpp", nullptr},
    {"mlflow", "mlflow.hpp", nullptr},
    {"neptune", nullptr, ": Neptune's hosted service shut down on 2026-03-05"},
    {"tensorboard", "tensorboard.hpp", nullptr},
    {"wandb", "wandb.hpp", nullptr},
    {"codecarbon", "codecarbon.hpp", nullptr},
    {"clearml", "clearml.hpp", nullptr},
    {"swanlab", "swanlab.hpp", nullptr},
    {"trackio", "trackio.hpp", nullptr},
    {"kubeflow", nullptr, " is a Hugging Face integration torchfit does not have"},
    {"csv", "csv.hpp", nullptr},
    {"jsonl", "jsonl.hpp", nullptr},
};

/// The entry of `name` in known_trackers; null for a name report_to does not know.
inline const KnownTracker* find_known_tracker(std::string_view name) {
  const auto it = std::find_if(std::begin(known_trackers), std::end(known_trackers),
                               [&](const KnownTracker& t) { return name == t.name; });
  return it == std::end(known_trackers) ? nullptr : &*it;
}

/// A tracker this program has: its header was included.
struct Integration {
  const KnownTracker* known;
  std::function<void(CallbackHandler&)> add;
};

/// The trackers this program has, in report_to="all" order.
inline std::vector<Integration>& registry() {
  static std::vector<Integration> integrations;
  return integrations;
}

/// Makes T the tracker report_to calls `name` (a name of known_trackers); each integration header does this
/// once through an inline variable.
template <typename T>
bool register_integration(std::string_view name) {
  const KnownTracker* known = find_known_tracker(name);
  if (known == nullptr || known->header == nullptr)
    throw Error(
        fmt::format("register_integration: \"{}\" is not a tracker of integrations::known_trackers", name));
  auto& r = registry();
  if (std::none_of(r.begin(), r.end(), [&](const Integration& i) { return i.known == known; }))
    r.push_back({known, [](CallbackHandler& handler) { handler.add_callback<T>(); }});
  std::sort(r.begin(), r.end(), [](const Integration& a, const Integration& b) { return a.known < b.known; });
  return true;
}

/// Names of the trackers compiled into this program, in report_to="all" order.
inline std::vector<std::string> available() {
  std::vector<std::string> names;
  for (const auto& i : registry()) names.push_back(i.known->name);
  return names;
}

/// The trackers `report_to` selects, in the order given ("all" = every available one, "none" = none). A name
/// that is not available is an ArgumentError saying why (the header to include, a tracker torchfit lacks, or
/// no tracker at all) and listing what is available.
inline std::vector<const Integration*> resolve(const std::vector<std::string>& report_to) {
  std::vector<const Integration*> selected;
  const auto& r = registry();
  if (report_to.empty() || (report_to.size() == 1 && report_to[0] == "none")) return selected;
  if (report_to.size() == 1 && report_to[0] == "all") {
    for (const auto& i : r) selected.push_back(&i);
    return selected;
  }
  for (const auto& name : report_to) {
    const auto it =
        std::find_if(r.begin(), r.end(), [&](const Integration& i) { return name == i.known->name; });
    if (it != r.end()) {
      if (std::find(selected.begin(), selected.end(), &*it) == selected.end()) selected.push_back(&*it);
      continue;
    }
    const std::string names = fmt::format("{}", fmt::join(available(), ", "));
    const std::string listed = "available: " + (names.empty() ? std::string("none") : names);
    const KnownTracker* known = find_known_tracker(name);
    if (known == nullptr)
      throw ArgumentError(
          fmt::format("--report_to: \"{}\" is not a tracker; {} (\"all\", \"none\")", name, listed));
    if (known->header == nullptr)
      throw ArgumentError(fmt::format("--report_to: \"{}\"{}; {}", name, known->absence, listed));
    throw ArgumentError(fmt::format(
        "--report_to: \"{}\" is not available; include <torchfit/integrations/{}> to make it available ({})",
        name, known->header, listed));
  }
  return selected;
}

/// Adds the callbacks of the trackers `report_to` selects.
inline void add_reporting_callbacks(CallbackHandler& handler, const std::vector<std::string>& report_to) {
  for (const Integration* i : resolve(report_to)) i->add(handler);
}

}  // namespace torchfit::integrations
