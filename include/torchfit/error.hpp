// SPDX-License-Identifier: MIT
#pragma once

#include <stdexcept>
#include <string>

namespace torchfit {

/// Base of every exception torchfit throws. Messages say what was wrong, where, and what would be right.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A bad training argument or command-line flag; the message names the field and the value.
struct ArgumentError : Error {
  using Error::Error;
};

/// A checkpoint (or a file inside one) that is missing, truncated, corrupt or does not fit the model.
struct CheckpointError : Error {
  using Error::Error;
};

/// A file torchfit reads (trainer_state.json, training_args.json, ...) that cannot be parsed.
struct FormatError : Error {
  using Error::Error;
};

/// A multi-process run that cannot start or cannot go on: a bad launch environment, a failed rendezvous, a rank
/// that died or hangs. The message names the rank, the address or the variable.
struct DistributedError : Error {
  using Error::Error;
};

}  // namespace torchfit
