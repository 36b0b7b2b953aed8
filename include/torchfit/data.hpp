// SPDX-License-Identifier: MIT
// Datasets the Trainer accepts and how it batches them: tensors in memory, named-tensor (TensorDict) batches,
// collators, memory-mapped files (.npy, safetensors, token files, text), streams, and data-loading workers.
// CSV files need libcsv: include <torchfit/data/csv_dataset.hpp> and link torchfit::csv.
#pragma once

#include "torchfit/data/batch.hpp"
#include "torchfit/data/collators.hpp"
#include "torchfit/data/detail/batches.hpp"
#include "torchfit/data/detail/prefetcher.hpp"
#include "torchfit/data/streaming.hpp"
#include "torchfit/data/tensor_datasets.hpp"
#include "torchfit/data/tensor_files.hpp"
#include "torchfit/data/text_dataset.hpp"
#include "torchfit/data/token_file_dataset.hpp"
