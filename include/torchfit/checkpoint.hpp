// SPDX-License-Identifier: MIT
// Checkpoints: layout, atomic saves, all-or-nothing loads, discovery and rotation.
//
// output_dir/checkpoint-<global_step>/
//   model.safetensors     weights (parameters and buffers), readable by Python's safetensors / transformers
//   optimizer.pt          optimizer state (torch::save's format)          } absent with save_only_model
//   scheduler.json        LR scheduler state                               }
//   rng_state.pt          CPU and CUDA generator states                    }
//                         (rng_state_<rank>.pt, one per process of a job)  }
//   trainer_progress.json loss accumulators, so logged losses after resume equal an uninterrupted run's
//   scaler.json           fp16 loss-scaler state (only with fp16)
//   trainer_state.json    HF-compatible TrainerState (with stateful_callbacks)
//   training_args.json    the TrainingArguments of the run
//
// Every file is written with checked calls and flushed, inside a hidden temporary directory renamed into place
// at the end (directory.hpp); a failure is a CheckpointError, never an abort.
#pragma once

#include "torchfit/checkpoint/archive.hpp"
#include "torchfit/checkpoint/directory.hpp"
#include "torchfit/checkpoint/json_file.hpp"
#include "torchfit/checkpoint/layout.hpp"
#include "torchfit/checkpoint/load.hpp"
#include "torchfit/checkpoint/model_state.hpp"
#include "torchfit/checkpoint/optimizer_state.hpp"
#include "torchfit/checkpoint/progress.hpp"
#include "torchfit/checkpoint/rng_state.hpp"
#include "torchfit/checkpoint/save.hpp"
