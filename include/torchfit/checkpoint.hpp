// SPDX-License-Identifier: MIT
// Checkpoint layout, atomic saves, discovery and rotation.
//
// output_dir/checkpoint-<global_step>/
//   model.safetensors     weights (parameters and buffers), readable by Python's safetensors / transformers
//   optimizer.pt          optimizer state (torch::save)                    } absent with save_only_model
//   scheduler.json        LR scheduler state                               }
//   rng_state.pt          CPU and CUDA generator states                    }
//   trainer_progress.json loss accumulators, so logged losses after resume equal an uninterrupted run's
//   scaler.json           fp16 loss-scaler state (only with fp16)
//   trainer_state.json    HF-compatible TrainerState (with stateful_callbacks), written last
//   training_args.json    the TrainingArguments of the run
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "torchfit/detail/safetensors.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"

namespace torchfit::checkpoint {

namespace fs = std::filesystem;

inline constexpr const char* model_file = "model.safetensors";
inline constexpr const char* optimizer_file = "optimizer.pt";
inline constexpr const char* scheduler_file = "scheduler.json";
inline constexpr const char* rng_file = "rng_state.pt";
inline constexpr const char* progress_file = "trainer_progress.json";
inline constexpr const char* scaler_file = "scaler.json";
inline constexpr const char* state_file = "trainer_state.json";
inline constexpr const char* args_file = "training_args.json";

/// `<output_dir>/checkpoint-<step>`.
inline fs::path dir_for(const fs::path& output_dir, int64_t step) {
  return output_dir / ("checkpoint-" + std::to_string(step));
}

/// The step of a `checkpoint-<digits>` directory name (HF's `^checkpoint-(\d+)$`), or nullopt.
inline std::optional<int64_t> step_of(const fs::path& dir) {
  static const std::regex pattern("^checkpoint-([0-9]+)$");
  std::smatch m;
  const std::string name = dir.filename().string();
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  return std::stoll(m[1].str());
}

/// A checkpoint is complete once its trainer_state.json exists: saves write it last, inside a temporary
/// directory that is renamed into place only after everything else is on disk.
inline bool is_complete(const fs::path& dir) { return fs::is_regular_file(dir / state_file); }

/// Complete checkpoints under output_dir, oldest (lowest step) first.
inline std::vector<fs::path> list(const fs::path& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output_dir, ec))
    if (auto step = step_of(entry.path()); step && entry.is_directory() && is_complete(entry.path()))
      found.emplace_back(*step, entry.path());
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

/// The newest complete checkpoint in output_dir (HF's get_last_checkpoint); CheckpointError if there is none.
inline fs::path last(const fs::path& output_dir) {
  auto all = list(output_dir);
  if (all.empty())
    throw CheckpointError("--resume_from_checkpoint last: no complete checkpoint-<step> directory in " +
                          output_dir.string());
  return all.back();
}

namespace detail {

/// Flushes a written file or directory to stable storage, so a rename published after it never exposes a
/// directory whose files are still only in the page cache.
inline void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw CheckpointError("cannot open " + path.string() + " to flush it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw CheckpointError("cannot flush " + path.string() + " to disk");
}

}  // namespace detail

/// Writes a checkpoint into `.checkpoint-<step>.tmp-<random>` and renames it to `checkpoint-<step>` on commit();
/// destroying an uncommitted writer removes the temporary directory. A crash at any point leaves earlier
/// checkpoints intact and nothing that list() or resume would take for a checkpoint.
class AtomicWriter {
 public:
  AtomicWriter(const fs::path& output_dir, int64_t step) : final_(dir_for(output_dir, step)) {
    fs::create_directories(output_dir);
    std::random_device rd;
    tmp_ = output_dir / (".checkpoint-" + std::to_string(step) + ".tmp-" + std::to_string(rd()));
    fs::create_directories(tmp_);
  }
  ~AtomicWriter() {
    std::error_code ec;
    if (!committed_) fs::remove_all(tmp_, ec);
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  /// Where files are written until commit().
  const fs::path& dir() const { return tmp_; }
  /// Where the checkpoint lives after commit().
  const fs::path& final_dir() const { return final_; }

  /// Flushes every file, then atomically publishes the directory (replacing an older one of the same step).
  void commit() {
    for (const auto& entry : fs::directory_iterator(tmp_)) detail::fsync_path(entry.path());
    detail::fsync_path(tmp_);
    if (fs::exists(final_)) {
      const fs::path old = final_.string() + ".old";
      fs::remove_all(old);
      fs::rename(final_, old);
      fs::rename(tmp_, final_);
      fs::remove_all(old);
    } else {
      fs::rename(tmp_, final_);
    }
    detail::fsync_path(final_.parent_path());
    committed_ = true;
  }

 private:
  fs::path final_;
  fs::path tmp_;
  bool committed_ = false;
};

/// Removes temporary directories left by saves that were interrupted (they never count as checkpoints).
inline void remove_stale_temporaries(const fs::path& output_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".checkpoint-", 0) == 0 && name.find(".tmp-") != std::string::npos) fs::remove_all(entry.path(), ec);
  }
}

/// Deletes the oldest checkpoints beyond `limit`, never the newest one (needed to resume) nor `best` (HF
/// deletes the newest at the end of training when the limit is 1, #35070; torchfit keeps both, so the effective
/// limit is 2 when they differ).
inline void rotate(const fs::path& output_dir, std::optional<int64_t> limit, const std::optional<std::string>& best) {
  if (!limit || *limit <= 0) return;
  auto all = list(output_dir);
  if (static_cast<int64_t>(all.size()) <= *limit) return;
  const auto same = [](const fs::path& a, const fs::path& b) {
    std::error_code ec;
    return fs::equivalent(a, b, ec);
  };
  std::vector<fs::path> keep{all.back()};
  for (const auto& p : all)
    if (best && same(p, *best) && !same(p, all.back())) keep.push_back(p);
  int64_t budget = std::max<int64_t>(*limit, static_cast<int64_t>(keep.size())) - static_cast<int64_t>(keep.size());
  for (auto it = all.rbegin() + 1; it != all.rend(); ++it) {
    if (std::any_of(keep.begin(), keep.end(), [&](const fs::path& k) { return same(k, *it); })) continue;
    if (budget > 0) {
      --budget;
      continue;
    }
    log::info("Deleting older checkpoint [{}] due to args.save_total_limit", it->string());
    std::error_code ec;
    fs::remove_all(*it, ec);
  }
}

/// Parameters and buffers of a module by their dotted names, as CPU tensors (the state dict).
inline std::vector<std::pair<std::string, torch::Tensor>> model_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value().detach());
  return out;
}

/// Pairs of (model tensor, checkpoint tensor) ready to copy; see read_model_state.
using ModelStateCopies = std::vector<std::pair<torch::Tensor, torch::Tensor>>;

/// Reads model weights from a safetensors file and checks every name, shape and dtype against the model without
/// changing it: a file that does not fit is refused whole, naming the first offending tensor.
inline ModelStateCopies read_model_state(const torch::nn::Module& model, const fs::path& file) {
  auto tensors = torchfit::detail::load_safetensors(file);
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  ModelStateCopies copies;
  for (const auto& [name, target] : model_state(model)) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw CheckpointError(file.string() + " has no tensor \"" + name + "\" that the model expects");
    if (it->second.sizes() != target.sizes())
      throw CheckpointError(file.string() + ": tensor \"" + name + "\" has shape " + c10::str(it->second.sizes()) +
                            " but the model expects " + c10::str(target.sizes()));
    if (it->second.scalar_type() != target.scalar_type())
      throw CheckpointError(file.string() + ": tensor \"" + name + "\" has dtype " +
                            std::string(c10::toString(it->second.scalar_type())) + " but the model expects " +
                            std::string(c10::toString(target.scalar_type())));
    copies.emplace_back(target, it->second);
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw CheckpointError(file.string() + " has tensor \"" + by_name.begin()->first +
                          "\" that the model does not have (a checkpoint of another model?)");
  return copies;
}

/// Copies what read_model_state validated into the model.
inline void apply_model_state(const ModelStateCopies& copies) {
  torch::NoGradGuard no_grad;
  for (const auto& [target, source] : copies) target.copy_(source);
}

/// Loads weights saved by save_model_state (or by Python's safetensors) into the model, all or nothing.
inline void load_model_state(torch::nn::Module& model, const fs::path& file) {
  apply_model_state(read_model_state(model, file));
}

/// Saves the weights as safetensors.
inline void save_model_state(const torch::nn::Module& model, const fs::path& file) {
  torchfit::detail::save_safetensors(file, model_state(model), {{"format", "pt"}});
}

/// Checks that `dir` is a checkpoint holding `files`, naming the first missing one.
inline void require_files(const fs::path& dir, std::initializer_list<const char*> files) {
  if (!fs::is_directory(dir)) throw CheckpointError("checkpoint directory " + dir.string() + " does not exist");
  for (const char* f : files)
    if (!fs::is_regular_file(dir / f))
      throw CheckpointError("checkpoint " + dir.string() + " is missing " + f +
                            (std::string(f) == optimizer_file ? " (was it saved with --save_only_model?)" : ""));
}

}  // namespace torchfit::checkpoint
