// SPDX-License-Identifier: MIT
// Training on several processes and machines: include this header in the program and link torchfit::distributed.
// Launched by torchrun (or srun), each process's Trainer then joins the job: one TCPStore rendezvous, a Gloo or
// NCCL process group, each rank reading its shard of the data, gradients averaged every update, evaluation
// outputs gathered, decisions agreed, rank 0 writing logs and checkpoints. Started alone, nothing changes.
#pragma once

#include "torchfit/distributed/agreement.hpp"
#include "torchfit/distributed/backend.hpp"
#include "torchfit/distributed/c10d.hpp"
#include "torchfit/distributed/collectives.hpp"
#include "torchfit/distributed/data_parallel.hpp"
#include "torchfit/distributed/gather.hpp"
#include "torchfit/distributed/launch.hpp"
#include "torchfit/distributed/shard.hpp"
#include "torchfit/distributed/world.hpp"
