// SPDX-License-Identifier: MIT
// The Backend on PyTorch's c10d: a TCPStore rendezvous, a Gloo or NCCL process group, and DistributedDataParallel's
// Reducer for bucketed gradient all-reduces overlapped with backward. Needs Gloo's headers and library: link
// torchfit::distributed.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef USE_C10D_GLOO
#include <gloo/common/error.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "torchfit/detail/system.hpp"
#include "torchfit/distributed/backend.hpp"
#include "torchfit/distributed/detail/liveness.hpp"
#include "torchfit/distributed/launch.hpp"
#include "torchfit/error.hpp"

namespace torchfit::distributed {

namespace detail {

inline std::string seconds(std::chrono::milliseconds timeout) {
  return fmt::format("{} s", std::chrono::duration_cast<std::chrono::seconds>(timeout).count());
}

inline c10::intrusive_ptr<c10d::TCPStore> open_tcp_store(const std::string& address,
                                                         c10d::TCPStoreOptions options) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  // From 2.4 the store asks for its libuv server, which libtorch builds without libuv (Debian's) refuse: use it
  // where it is there and not turned off with PyTorch's USE_LIBUV=0, else the classic server.
  const char* use_libuv = std::getenv("USE_LIBUV");
  options.useLibUV = !(use_libuv != nullptr && std::string_view(use_libuv) == "0");
  if (options.useLibUV) {
    try {
      return c10::make_intrusive<c10d::TCPStore>(address, options);
    } catch (const std::exception& e) {
      if (std::string_view(e.what()).find("without libuv support") == std::string_view::npos) throw;
      options.useLibUV = false;
    }
  }
#endif
  return c10::make_intrusive<c10d::TCPStore>(address, options);
}

// The store at MASTER_ADDR:MASTER_PORT: rank 0 hosts it, unless torchrun's agent does.
inline c10::intrusive_ptr<c10d::Store> connect_store(const Launch& launch, bool host,
                                                     std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(launch.master_port);
  options.isServer = host;
  options.waitWorkers = false;  // check_members() waits, naming the ranks that do not come
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = open_tcp_store(launch.master_addr, options);
  } catch (const std::exception& e) {
    const std::string cause = e.what();
    if (host && cause.find("ddress already in use") != std::string::npos)
      throw DistributedError(
          fmt::format("rank 0 cannot host the rendezvous store on port {} (MASTER_PORT): the port is in use, "
                      "perhaps by another job; choose another one (torchrun --master_port)",
                      launch.master_port));
    throw DistributedError(fmt::format(
        "rank {} cannot reach the rendezvous store at {}:{} (MASTER_ADDR:MASTER_PORT) within "
        "--ddp_timeout {}: is the address right, is rank 0 running, does a firewall block the port? "
        "({})",
        launch.rank, launch.master_addr, launch.master_port, seconds(timeout),
        cause.substr(0, cause.find('\n'))));
  }
  if (launch.agent_store) return c10::make_intrusive<c10d::PrefixStore>(launch.store_prefix, store);
  return store;
}

inline void set_text(c10d::Store& store, const std::string& key, const std::string& value) {
  store.set(key, std::vector<uint8_t>(value.begin(), value.end()));
}
inline std::string get_text(c10d::Store& store, const std::string& key) {
  const auto bytes = store.get(key);
  return std::string(bytes.begin(), bytes.end());
}

// Every rank announces "<world size> <host> <pid>" and waits for all the others: a rank started twice, world sizes
// that differ, and ranks that never come are named instead of leaving the others to wait in the process group.
// The other ranks read rank 0's announcement before making their own, so that rank 0, which stops (with its store)
// once it has seen theirs, cannot leave before they have compared.
inline void check_members(c10d::Store& store, const Launch& launch, std::chrono::milliseconds timeout) {
  const auto member = [](int64_t rank) { return "torchfit/member/" + std::to_string(rank); };
  if (store.add("torchfit/claim/" + std::to_string(launch.rank), 1) > 1)
    throw DistributedError(fmt::format(
        "two processes were started as rank {} (RANK={}): give each process of the job its own rank",
        launch.rank, launch.rank));
  const auto size_of = [&](int64_t rank) {
    std::istringstream in(get_text(store, member(rank)));
    int64_t size = 0;
    in >> size;
    return size;
  };
  const auto check_size = [&](int64_t rank, int64_t size) {
    if (size != launch.world_size)
      throw DistributedError(
          fmt::format("rank {} was started with WORLD_SIZE={} but rank {} with WORLD_SIZE={}: "
                      "start every process of the job with the same world size",
                      rank, size, launch.rank, launch.world_size));
  };
  const auto announce = [&] {
    set_text(store, member(launch.rank),
             fmt::format("{} {} {}", launch.world_size, torchfit::detail::host_name(), ::getpid()));
  };
  std::vector<std::string> keys;
  for (int64_t r = 0; r < launch.world_size; ++r) keys.push_back(member(r));
  try {
    if (launch.rank == 0) {
      announce();
    } else {
      store.wait({member(0)}, timeout);
      const int64_t rank0_size = size_of(0);
      announce();  // also when the sizes differ, so that rank 0 names the difference too
      check_size(0, rank0_size);
    }
    store.wait(keys, timeout);
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    std::string missing, joined;
    try {
      for (int64_t r = 0; r < launch.world_size; ++r)
        (store.check({member(r)}) ? joined : missing) += fmt::format(" {}", r);
    } catch (const std::exception&) {
      throw DistributedError(
          fmt::format("rank {}: the rendezvous store at {}:{} went away while the job formed "
                      "(did rank 0 fail?): {}",
                      launch.rank, launch.master_addr, launch.master_port, e.what()));
    }
    throw DistributedError(
        fmt::format("rank(s){} of {} did not join the job within --ddp_timeout {} (joined:{}); "
                    "were they started, with the same MASTER_ADDR and MASTER_PORT?",
                    missing, launch.world_size, seconds(timeout), joined));
  }
  if (launch.rank == 0)
    for (int64_t r = 1; r < launch.world_size; ++r) check_size(r, size_of(r));
}

inline c10::intrusive_ptr<c10d::ProcessGroup> process_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                            const Launch& launch,
                                                            const BackendOptions& options) {
  const int rank = static_cast<int>(launch.rank);
  const int size = static_cast<int>(launch.world_size);
  const auto prefixed = c10::make_intrusive<c10d::PrefixStore>("torchfit/" + options.backend, store);
  if (options.backend == "gloo") {
#ifdef USE_C10D_GLOO
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    // As torch.distributed: the interfaces GLOO_SOCKET_IFNAME names, else the address of this machine's name.
    if (const char* names = std::getenv("GLOO_SOCKET_IFNAME")) {
      std::istringstream in(names);
      for (std::string name; std::getline(in, name, ',');)
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    } else {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    gloo_options->threads = static_cast<int>(gloo_options->devices.size()) * 2;
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, gloo_options);
#if TORCH_VERSION_MAJOR >= 2
    // libtorch 2 wraps backends in a ProcessGroup that dispatches by device type.
    auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    return group;
#else
    return gloo;
#endif
#else
    throw DistributedError(
        "--ddp_backend gloo: this libtorch was built without Gloo; use --ddp_backend nccl");
#endif
  }
#ifdef USE_C10D_NCCL
  auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
  nccl_options->timeout = options.timeout;
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, nccl_options);
#if TORCH_VERSION_MAJOR >= 2
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
  group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
  return group;
#else
  return nccl;
#endif
#else
  throw DistributedError("--ddp_backend nccl: this libtorch was built without NCCL; use --ddp_backend gloo");
#endif
}

// A failure of the communication itself, as opposed to an error of the computation a backward pass ran.
inline bool is_communication_failure(const std::exception& e) {
#ifdef USE_C10D_GLOO
  if (dynamic_cast<const ::gloo::Exception*>(&e) != nullptr) return true;
#endif
  const std::string what = e.what();
  return what.find("NCCL") != std::string::npos || what.find("Gloo") != std::string::npos ||
         what.find("gloo") != std::string::npos;
}

}  // namespace detail

/// Backend on c10d: see the header's comment.
class C10dBackend final : public Backend {
 public:
  C10dBackend(const Launch& launch, const BackendOptions& options) : rank_(launch.rank), options_(options) {
    const bool host = !launch.agent_store && launch.rank == 0;
    store_ = detail::connect_store(launch, host, options.timeout);
    detail::check_members(*store_, launch, options.timeout);
    try {
      group_ = detail::process_group(store_, launch, options);
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      throw DistributedError(
          fmt::format("rank {}: the {} process group could not connect the {} ranks within "
                      "--ddp_timeout {}: {}",
                      rank_, options.backend, launch.world_size, detail::seconds(options.timeout), e.what()));
    }
    // Beats every second (faster under a short timeout, so that a failure is explained well within it).
    const auto interval =
        std::clamp(options.timeout / 10, std::chrono::milliseconds(100), std::chrono::milliseconds(1000));
    liveness_ = std::make_unique<detail::Liveness>(detail::connect_store(launch, false, 4 * interval), rank_,
                                                   launch.world_size, interval);
  }

  ~C10dBackend() override {
    liveness_.reset();  // first: its thread uses the store
    group_.reset();
    store_.reset();
  }

  void all_reduce(torch::Tensor& tensor, ReduceOp op, const std::string& what) override {
    collective(what, [&] {
      std::vector<at::Tensor> tensors{tensor};
      c10d::AllreduceOptions reduce;
      reduce.reduceOp = op == ReduceOp::sum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
      group_->allreduce(tensors, reduce)->wait();
    });
  }

  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor, const std::string& what) override {
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < group_->getSize(); ++r) outputs[0].push_back(torch::empty_like(tensor));
    collective(what, [&] {
      std::vector<at::Tensor> inputs{tensor};
      group_->allgather(outputs, inputs)->wait();
    });
    return outputs[0];
  }

  void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) override {
    // As DistributedDataParallel: coalesced into buckets of at most 250 MiB.
    collective(what, [&] { c10d::broadcast_coalesced(group_, tensors, 250u << 20); });
  }

  void barrier(const std::string& what) override {
    collective(what, [&] { group_->barrier()->wait(); });
  }

  std::unique_ptr<GradientReducer> make_reducer(std::vector<torch::Tensor> parameters,
                                                std::vector<std::string> names,
                                                const ReducerOptions& options) override;

  void guard(const std::string& what, const std::function<void()>& body) override {
    try {
      body();
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      if (!detail::is_communication_failure(e)) throw;
      fail(what, e);
    }
  }

  torch::Device device() const override { return options_.backend == "nccl" ? options_.device : torch::kCPU; }

  /// Runs `body`, which makes one collective call.
  void collective(const std::string& what, const std::function<void()>& body) {
    liveness_->begin_collective();
    try {
      body();
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      fail(what, e);
    }
  }

  const c10::intrusive_ptr<c10d::ProcessGroup>& group() const { return group_; }

 private:
  [[noreturn]] void fail(const std::string& what, const std::exception& cause) {
    std::string text = cause.what();
    text = text.substr(0, text.find('\n'));  // c10's messages go on with a C++ backtrace
    const std::string culprit = liveness_->culprit(options_.timeout);
    throw DistributedError(
        fmt::format("rank {}: {} failed{}{} ({})", rank_, what, culprit.empty() ? "" : ": ", culprit, text));
  }

  int64_t rank_;
  BackendOptions options_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  std::unique_ptr<detail::Liveness> liveness_;
};

namespace detail {

/// DistributedDataParallel's Reducer over the trainable parameters.
class C10dReducer final : public GradientReducer {
 public:
  C10dReducer(C10dBackend& backend, std::vector<torch::Tensor> parameters,
              const std::vector<std::string>& names, const ReducerOptions& options)
      : backend_(backend) {
    backend_.collective("checking that every rank trains the same parameters",
                        [&] { c10d::verify_params_across_processes(backend_.group(), parameters, {}); });
    const auto cap = static_cast<std::size_t>(options.bucket_cap_mb * 1024 * 1024);
    const auto first_cap = static_cast<std::size_t>(c10d::kDefaultFirstBucketBytes);
    auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(parameters, {first_cap, cap});
    // As DistributedDataParallel: gradients become ready roughly from the last parameter to the first.
    std::reverse(buckets.begin(), buckets.end());
    std::reverse(limits.begin(), limits.end());
    std::unordered_map<std::size_t, std::string> names_by_index;
    for (std::size_t i = 0; i < names.size(); ++i) names_by_index[i] = names[i];
    const std::size_t count = parameters.size();
    reducer_ = std::make_unique<c10d::Reducer>(
        std::move(parameters), std::move(buckets), std::move(limits), backend_.group(),
        std::vector<bool>(count, false), static_cast<int64_t>(cap), options.find_unused_parameters,
        /*gradient_as_bucket_view=*/false, std::move(names_by_index), static_cast<int64_t>(first_cap));
  }

  void prepare_for_backward(const torch::Tensor& loss) override {
    backend_.collective("the gradient all-reduce", [&] {
      try {
        reducer_->rebuild_buckets();  // once, after the first synchronised backward (DDP does it in forward)
        reducer_->prepare_for_backward({loss});
      } catch (const c10::Error& e) {
        const std::string text = e.what_without_backtrace();
        if (text.find("Expected to have finished reduction") == std::string::npos) throw;
        throw DistributedError(
            "some trainable parameters did not contribute to the previous step's loss, so their gradients "
            "were "
            "never averaged: pass --ddp_find_unused_parameters true, or freeze them (requires_grad false)");
      }
    });
  }

 private:
  C10dBackend& backend_;
  std::unique_ptr<c10d::Reducer> reducer_;
};

}  // namespace detail

inline std::unique_ptr<GradientReducer> C10dBackend::make_reducer(std::vector<torch::Tensor> parameters,
                                                                  std::vector<std::string> names,
                                                                  const ReducerOptions& options) {
  return std::make_unique<detail::C10dReducer>(*this, std::move(parameters), names, options);
}

/// Registers C10dBackend as the Backend of multi-process jobs (including this header is enough).
inline const bool c10d_backend_registered =
    register_backend([](const Launch& launch, const BackendOptions& options) -> std::unique_ptr<Backend> {
      return std::make_unique<C10dBackend>(launch, options);
    });

}  // namespace torchfit::distributed
