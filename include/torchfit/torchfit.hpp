// SPDX-License-Identifier: MIT
// torchfit: Hugging Face Trainer's training loop and callbacks for libtorch. Integrations are opt-in:
// include <torchfit/integrations/NAME.hpp> for each tracker you want available to report_to.
#pragma once

#include "torchfit/argument_parser.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/callbacks/default_flow.hpp"
#include "torchfit/callbacks/early_stopping.hpp"
#include "torchfit/callbacks/printer.hpp"
#include "torchfit/callbacks/progress.hpp"
#include "torchfit/callbacks/terminate_on_nan.hpp"
#include "torchfit/checkpoint.hpp"
#include "torchfit/cpu_allocator.hpp"
#include "torchfit/data.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"
#include "torchfit/metrics.hpp"
#include "torchfit/model_summary.hpp"
#include "torchfit/optimizers.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/seed.hpp"
#include "torchfit/trainer.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_control.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"
#include "torchfit/version.hpp"
