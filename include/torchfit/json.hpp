// SPDX-License-Identifier: MIT
#pragma once

#include <nlohmann/json.hpp>

namespace torchfit {

/// The JSON value type used across torchfit. Insertion-ordered, so a log prints its keys in the order they were
/// added (HF's dict order); files are written key-sorted regardless (see detail/py_json.hpp).
using json = nlohmann::ordered_json;

/// One log entry or metrics dict: a JSON object of numbers (ints stay ints) and strings.
using Logs = json;

}  // namespace torchfit
