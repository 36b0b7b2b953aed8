// SPDX-License-Identifier: MIT
// torchfit: Hugging Face Trainer's training loop and callbacks for libtorch. Integrations are opt-in:
// include <torchfit/integrations/NAME.hpp> for each tracker you want available to report_to.
#pragma once

#include "torchfit/version.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"
#include "torchfit/json.hpp"
#include "torchfit/training_args.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/callback_handler.hpp"
