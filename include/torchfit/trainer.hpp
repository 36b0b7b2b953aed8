// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/callback_handler.hpp"
#include "torchfit/callbacks/default_flow.hpp"
#include "torchfit/callbacks/printer.hpp"
#include "torchfit/callbacks/progress.hpp"
#include "torchfit/checkpoint.hpp"
#include "torchfit/data.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/detail/eval_gather.hpp"
#include "torchfit/detail/memory_tracker.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"
#include "torchfit/loop/training_plan.hpp"
#include "torchfit/optimizers.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// What a loss function returns when evaluation should also see predictions (for compute_metrics). A loss
/// function may return a plain scalar tensor instead.
struct LossOutput {
  torch::Tensor loss;
  torch::Tensor predictions;  // e.g. logits; gathered over the evaluation set when compute_metrics is set
  torch::Tensor labels;       // defaults to the batch's target
};

/// Predictions and labels of a whole evaluation set, on the host, concatenated along dimension 0; batches whose
/// dimension 1 differs are padded with -100 to the longest (HF's EvalPrediction and nested_concat).
struct EvalPrediction {
  torch::Tensor predictions;
  torch::Tensor label_ids;
};

/// Several eval datasets, evaluated in this order with metrics prefixed `eval_<name>_` (HF's dict of eval
/// datasets).
template <typename Data>
using NamedDatasets = std::vector<std::pair<std::string, Data>>;

/// Result of train() (HF's TrainOutput).
struct TrainOutput {
  int64_t global_step = 0;
  double training_loss = 0;
  Logs metrics;
};

/// Result of predict() (HF's PredictionOutput).
struct PredictionOutput {
  torch::Tensor predictions;
  torch::Tensor label_ids;
  Logs metrics;
};

namespace detail {

/// Every value the library reads back from the device goes through here, so "no host-device sync outside
/// logging steps" is something a test can count.
inline std::atomic<int64_t>& host_reads() {
  static std::atomic<int64_t> count{0};
  return count;
}
inline double to_host(const torch::Tensor& t) {
  ++host_reads();
  return t.item<double>();
}

template <typename T, typename = void>
struct is_module_holder : std::false_type {};
template <typename T>
struct is_module_holder<T, std::void_t<decltype(std::declval<T&>().ptr())>> : std::true_type {};

/// Whether the model defines `floating_point_ops(batch)`, HF's hook for counting `total_flos` (HF's
/// PreTrainedModel counts 6 x tokens x non-embedding parameters; other models count nothing).
template <typename Model, typename Batch, typename = void>
struct has_floating_point_ops : std::false_type {};
template <typename Model, typename Batch>
struct has_floating_point_ops<
    Model, Batch, std::void_t<decltype(std::declval<Model&>()->floating_point_ops(std::declval<const Batch&>()))>>
    : std::true_type {};

/// The model as a plain module pointer, for a torch::nn::ModuleHolder (`Net`) or a shared_ptr to a module.
template <typename Model>
std::shared_ptr<torch::nn::Module> module_of(Model& model) {
  if constexpr (is_module_holder<Model>::value)
    return model.ptr();
  else
    return std::static_pointer_cast<torch::nn::Module>(model);
}

inline double round_to(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

/// HF's speed_metrics: `<split>_runtime` (4 decimals) and, when time passed, the rates of what was given.
inline void add_speed_metrics(Logs& metrics, const std::string& split, double seconds,
                              std::optional<int64_t> samples, std::optional<int64_t> steps,
                              std::optional<int64_t> tokens = std::nullopt) {
  metrics[split + "_runtime"] = round_to(seconds, 4);
  if (seconds <= 0) return;
  const auto rate = [&](const char* what, std::optional<int64_t> count) {
    if (count) metrics[split + "_" + what + "_per_second"] = round_to(static_cast<double>(*count) / seconds, 3);
  };
  rate("samples", samples);
  rate("steps", steps);
  rate("tokens", tokens);
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace detail

/// The training loop (HF's Trainer): train(), evaluate() and predict() firing HF's events in HF's order, with
/// TrainerState kept as HF keeps it, checkpoints and exact resume.
///
/// `Model` is a module holder (`Net`, i.e. torch::nn::ModuleHolder<NetImpl>) or a std::shared_ptr to a module;
/// `TrainData`/`EvalData` are TensorPairDataset, std::pair<Tensor, Tensor> or map-style torch datasets.
/// `loss_fn(model, batch)` returns a scalar loss tensor or a LossOutput.
template <typename Model, typename TrainData, typename EvalData = TrainData>
class Trainer {
 public:
  using Batch = typename detail::DataTraits<TrainData>::Batch;
  using LossFn = std::function<LossOutput(Model&, const Batch&)>;
  using MetricsFn = std::function<Logs(const EvalPrediction&)>;
  static_assert(std::is_same_v<Batch, typename detail::DataTraits<EvalData>::Batch>,
                "the train and eval datasets must produce the same batch type");

  /// Sets the seed, builds the callback list (DefaultFlow, report_to integrations, `callbacks`, then Progress or
  /// Printer last, HF's order) and fires on_init_end, which `callbacks` receive too. Arguments are validated here.
  template <typename LossFunction>
  Trainer(Model model, TrainingArguments args, TrainData train_dataset, std::optional<EvalData> eval_dataset,
          LossFunction loss_fn, MetricsFn compute_metrics = {}, const CallbackList& callbacks = {})
      : Trainer(std::move(model), std::move(args), std::move(train_dataset),
                eval_dataset ? NamedDatasets<EvalData>{{"", std::move(*eval_dataset)}} : NamedDatasets<EvalData>{},
                std::move(loss_fn), std::move(compute_metrics), callbacks) {}

  /// With several named eval datasets: each evaluation runs them in order, logs each, and returns (and tracks
  /// the best metric over) all their metrics together.
  template <typename LossFunction>
  Trainer(Model model, TrainingArguments args, TrainData train_dataset, NamedDatasets<EvalData> eval_datasets,
          LossFunction loss_fn, MetricsFn compute_metrics = {}, const CallbackList& callbacks = {})
      : model_(std::move(model)),
        module_(detail::module_of(model_)),
        args_(std::move(args)),
        train_data_(std::move(train_dataset)),
        eval_sets_(std::move(eval_datasets)),
        loss_fn_(wrap_loss(std::move(loss_fn))),
        compute_metrics_(std::move(compute_metrics)) {
    args_.validate();
    if (args_.eval_strategy != IntervalStrategy::no && eval_sets_.empty())
      throw ArgumentError("--eval_strategy \"" + to_string(args_.eval_strategy) +
                          "\" needs an eval dataset; pass one to the Trainer or use --eval_strategy no");
    if (args_.eval_on_start && eval_sets_.empty())
      throw ArgumentError("--eval_on_start needs an eval dataset; pass one to the Trainer or drop --eval_on_start");
    for (std::size_t i = 0; i < eval_sets_.size(); ++i) {
      const std::string& name = eval_sets_[i].first;
      if (eval_sets_.size() > 1 && name.empty())
        throw ArgumentError("eval dataset " + std::to_string(i) + " has no name: name every one of several eval datasets");
      for (std::size_t j = 0; j < i; ++j)
        if (eval_sets_[j].first == name) throw ArgumentError("two eval datasets are named \"" + name + "\"");
    }
    torch::manual_seed(static_cast<uint64_t>(args_.seed));
    if (args_.full_determinism) at::globalContext().setDeterministicAlgorithms(true, false);
    device_ = (!args_.use_cpu && torch::cuda::is_available()) ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    memory_.start("init", device_);
    if ((args_.fp16 || args_.bf16) && !device_.is_cuda())
      log::warning("--{} needs CUDA; training in fp32 on the CPU", args_.fp16 ? "fp16" : "bf16");
    module_->to(device_);

    handler_.add_callback<DefaultFlowCallback>();
    if (state_.is_world_process_zero) integrations::add_reporting_callbacks(handler_, args_.report_to);
    for (const CallbackRef& callback : callbacks) handler_.add_callback(callback);
    if (args_.disable_tqdm)
      handler_.add_tail_callback(std::make_shared<PrinterCallback>());
    else
      handler_.add_tail_callback(std::make_shared<ProgressCallback>());
    handler_.context().model = module_;
    handler_.on_init_end(args_, state_, control_);
    memory_.stop("init");
  }

  /// Without an eval dataset.
  template <typename LossFunction>
  Trainer(Model model, TrainingArguments args, TrainData train_dataset, LossFunction loss_fn,
          const CallbackList& callbacks = {})
      : Trainer(std::move(model), std::move(args), std::move(train_dataset), std::nullopt, std::move(loss_fn), {},
                callbacks) {}

  // ---- callbacks ----

  /// Adds a callback after the ones already registered, before Progress/Printer.
  template <typename T, typename... CtorArgs>
  std::shared_ptr<T> add_callback(CtorArgs&&... ctor_args) {
    return handler_.add_callback<T>(std::forward<CtorArgs>(ctor_args)...);
  }
  template <typename T>
  std::shared_ptr<T> add_callback(std::shared_ptr<T> callback) {
    return handler_.add_callback(std::move(callback));
  }
  template <typename T>
  std::shared_ptr<T> pop_callback() {
    return handler_.pop_callback<T>();
  }
  std::shared_ptr<TrainerCallback> pop_callback(const TrainerCallback& callback) {
    return handler_.pop_callback(callback);
  }
  template <typename T>
  void remove_callback() {
    handler_.remove_callback<T>();
  }
  void remove_callback(const TrainerCallback& callback) { handler_.remove_callback(callback); }
  CallbackHandler& callback_handler() { return handler_; }

  // ---- optimizer and scheduler ----

  /// Uses this optimizer instead of the one `args.optim` describes (HF's `optimizers=(opt, None)`).
  void set_optimizer(std::shared_ptr<torch::optim::Optimizer> optimizer) {
    optimizer_ = std::move(optimizer);
    if (owns_scheduler_) scheduler_.reset();  // it drove the previous optimizer
  }
  /// Uses this scheduler instead of the one `args.lr_scheduler_type` describes; it must drive the optimizer
  /// given to set_optimizer.
  void set_scheduler(std::shared_ptr<LRScheduler> scheduler) {
    scheduler_ = std::move(scheduler);
    owns_scheduler_ = false;
  }

  // ---- accessors ----

  const TrainingArguments& args() const { return args_; }
  TrainerState& state() { return state_; }
  const TrainerState& state() const { return state_; }
  TrainerControl& control() { return control_; }
  Model& model() { return model_; }
  const torch::Device& device() const { return device_; }
  torch::optim::Optimizer* optimizer() { return optimizer_.get(); }
  LRScheduler* lr_scheduler() { return scheduler_.get(); }

  // ---- training ----

  /// Trains from scratch, or resumes from `resume_from_checkpoint` (a checkpoint directory, or "last" for the
  /// newest complete checkpoint in output_dir; defaults to args.resume_from_checkpoint).
  TrainOutput train(std::optional<std::string> resume_from_checkpoint = std::nullopt) {
    memory_.start("train", device_);
    if (!resume_from_checkpoint) resume_from_checkpoint = args_.resume_from_checkpoint;
    std::optional<std::filesystem::path> resume_dir;
    if (resume_from_checkpoint)
      resume_dir = *resume_from_checkpoint == "last" ? checkpoint::last(args_.output_dir)
                                                     : std::filesystem::path(*resume_from_checkpoint);

    const TrainingPlan plan = TrainingPlan::make(args_, detail::DataTraits<TrainData>::size(train_data_));
    const int64_t batch_size = plan.batch_size, max_steps = plan.max_steps;
    const int64_t ga = args_.gradient_accumulation_steps;

    create_optimizer_and_scheduler(max_steps);
    state_ = TrainerState{};
    state_.train_batch_size = batch_size;
    state_.compute_steps(args_, max_steps);
    state_.epoch = 0.0;
    session_ = Session{};
    session_.loss_sum = torch::zeros({}, torch::TensorOptions().device(device_));
    checkpoint::remove_leftovers(args_.output_dir);
    if (resume_dir) resume_from(*resume_dir, max_steps);
    session_.start = std::chrono::steady_clock::now();
    session_.tokens_seen_at_start = state_.num_input_tokens_seen;
    if (args_.include_num_input_tokens_seen == TokenCounting::non_padding) {
      if (pad_token_id_)
        session_.non_padding_tokens = torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device_));
      else
        log::warning("--include_num_input_tokens_seen non_padding: no padding value was given "
                     "(Trainer::set_pad_token_id); counting every input element");
    }
    const int64_t start_step = state_.global_step;

    train_loader_info_ = LoaderInfo{plan.batches_per_epoch, plan.num_samples, batch_size};
    auto& ctx = handler_.context();
    ctx.optimizer = optimizer_.get();
    ctx.lr_scheduler = scheduler_.get();
    ctx.train_dataloader = &train_loader_info_;
    state_.init_training_references(max_steps, plan.num_train_epochs);
    optimizer_->zero_grad();

    const std::string recorded_stop = control_.should_training_stop ? control_.stop_reason : std::string();
    handler_.on_train_begin(args_, state_, control_);
    if (!recorded_stop.empty()) {
      log::info("Not training further: the checkpoint recorded a stop ({})", recorded_stop);
      control_.stop_training(recorded_stop);
    }
    if (args_.eval_on_start && !control_.should_training_stop) evaluate_all();

    module_->train();
    const int64_t epochs_trained = state_.global_step / plan.updates_per_epoch;
    const int64_t skip_in_first_epoch =
        args_.ignore_data_skip ? 0 : (state_.global_step % plan.updates_per_epoch) * ga;
    const bool done = control_.should_training_stop || state_.global_step >= max_steps;
    for (int64_t epoch = epochs_trained; epoch < plan.num_train_epochs && !done; ++epoch) {
      detail::BatchPlan<TrainData> batches(train_data_, batch_size, args_.dataloader_drop_last,
                                           static_cast<uint64_t>(args_.data_seed.value_or(args_.seed) + epoch));
      handler_.on_epoch_begin(args_, state_, control_);
      const int64_t first = epoch == epochs_trained ? skip_in_first_epoch : 0;
      run_epoch(batches, epoch, first);
      handler_.on_epoch_end(args_, state_, control_);
      maybe_log_save_evaluate();
      if (control_.should_training_stop) break;
    }

    if (args_.load_best_model_at_end && state_.best_model_checkpoint) {
      log::info("Loading best model from {} (score: {}).", *state_.best_model_checkpoint,
                detail::python_float_repr(state_.best_metric.value_or(NAN)));
      checkpoint::load_model_state(*module_, std::filesystem::path(*state_.best_model_checkpoint) / checkpoint::model_file);
    }

    session_.loss_total += window_loss_sum();
    reset_loss_window();
    const double runtime = detail::seconds_since(session_.start);
    const int64_t session_steps = state_.global_step - start_step;
    const double train_loss = session_.loss_total / static_cast<double>(std::max<int64_t>(state_.global_step, 1));
    Logs metrics = Logs::object();
    // Rates are over this call's work (HF divides totals since step 0 by this session's time, #40560).
    detail::add_speed_metrics(metrics, "train", runtime, session_.samples, session_steps,
                              args_.include_tokens_per_second ? std::optional<int64_t>(session_.tokens)
                                                              : std::nullopt);
    metrics["total_flos"] = state_.total_flos;
    metrics["train_loss"] = train_loss;
    memory_.stop_and_update_metrics("train", metrics);
    log_in_place(metrics, false);
    handler_.on_train_end(args_, state_, control_);
    return TrainOutput{state_.global_step, train_loss, metrics};
  }

  /// Evaluates on the eval dataset; metrics are prefixed "eval_" (HF). Fires on_prediction_step per batch, then
  /// on_log and on_evaluate.
  Logs evaluate() {
    if (eval_sets_.empty()) throw Error("evaluate(): the Trainer was built without an eval dataset");
    return evaluate_all();
  }

  /// Evaluates on `dataset`, with metrics prefixed `<metric_key_prefix>_` (HF's evaluate(eval_dataset,
  /// metric_key_prefix=...)).
  Logs evaluate(const EvalData& dataset, const std::string& metric_key_prefix = "eval") {
    return evaluate_impl(dataset, metric_key_prefix);
  }

  /// Runs the model over `dataset` and returns predictions, labels and metrics prefixed `<metric_key_prefix>_`;
  /// fires on_predict (no on_log, as HF).
  PredictionOutput predict(const EvalData& dataset, const std::string& metric_key_prefix = "test") {
    memory_.start("test", device_);
    PredictionOutput out;
    Pass pass = run_prediction_pass(dataset, metric_key_prefix, /*gather=*/true);
    out.predictions = pass.predictions;
    out.label_ids = pass.labels;
    out.metrics = std::move(pass.metrics);
    handler_.on_predict(args_, state_, control_, out.metrics, metric_key_prefix);
    memory_.stop_and_update_metrics("test", out.metrics);
    return out;
  }

  /// Writes state.json of the trainer to `<output_dir>/trainer_state.json` (HF's save_state; includes the
  /// final summary entry, which checkpoints never contain).
  void save_state() const {
    std::filesystem::create_directories(args_.output_dir);
    state_.save_to_json(std::filesystem::path(args_.output_dir) / checkpoint::state_file);
  }

  /// Saves the model weights as `<dir>/model.safetensors` (default: output_dir).
  void save_model(const std::optional<std::string>& dir = std::nullopt) const {
    const std::filesystem::path target = dir.value_or(args_.output_dir);
    std::filesystem::create_directories(target);
    checkpoint::save_model_state(*module_, target / checkpoint::model_file);
  }

  /// Appends `logs` (plus epoch, and num_input_tokens_seen when counted) to the log history and fires on_log
  /// (HF's Trainer.log).
  void log(Logs logs) { log_in_place(logs, false); }

  /// The input value that marks padding, for `--include_num_input_tokens_seen non_padding` (HF reads it from
  /// the tokenizer).
  void set_pad_token_id(int64_t id) { pad_token_id_ = id; }

 private:
  // HF's log(logs, start_time): the caller's `logs` get epoch and the token count too; training logs also get
  // this session's token rate.
  void log_in_place(Logs& logs, bool with_token_rate) {
    if (state_.epoch) logs["epoch"] = state_.epoch_json();
    if (args_.include_num_input_tokens_seen != TokenCounting::no) {
      read_token_count();
      logs["num_input_tokens_seen"] = state_.num_input_tokens_seen;
      if (with_token_rate)
        detail::add_speed_metrics(logs, "train", detail::seconds_since(session_.start), std::nullopt, std::nullopt,
                                  state_.num_input_tokens_seen - session_.tokens_seen_at_start);
    }
    Logs entry = logs;
    entry["step"] = state_.global_step;
    state_.log_history.push_back(std::move(entry));
    handler_.on_log(args_, state_, control_, logs);
  }

  // Quantities of one train() call; loss_sum and last_logged are restored on resume so that logged losses
  // after a resume equal an uninterrupted run's.
  struct Session {
    torch::Tensor loss_sum;      // plain sum of per-step losses since the last log, on the device
    float window_base = 0;       // what loss_sum held when `pending` was last emptied
    struct Pending {
      torch::Tensor loss;
      int64_t global_step;
    };
    std::vector<Pending> pending;  // micro-step losses added since, kept for the NaN/Inf filter
    double loss_total = 0;       // sum of per-step losses logged so far over the whole training
    int64_t last_logged = 0;     // global_step of the last training log
    int64_t samples = 0;         // samples trained on in this call
    torch::Tensor grad_norm;     // pre-clip norm of the last update, on the device
    double learning_rate = 0;    // lr used by the last update
    std::chrono::steady_clock::time_point start;  // of this train() call
    int64_t tokens = 0;          // input elements trained on in this call
    int64_t tokens_seen_at_start = 0;
    torch::Tensor non_padding_tokens;  // counted on the device since the last read (non_padding mode)
  };

  struct Pass {
    torch::Tensor predictions;
    torch::Tensor labels;
    Logs metrics;
  };

  template <typename F>
  static LossFn wrap_loss(F f) {
    using Result = std::decay_t<std::invoke_result_t<F&, Model&, const Batch&>>;
    if constexpr (std::is_same_v<Result, LossOutput>) {
      return LossFn(std::move(f));
    } else {
      static_assert(std::is_convertible_v<Result, torch::Tensor>,
                    "loss_fn(model, batch) must return a torch::Tensor or a torchfit::LossOutput");
      return [f = std::move(f)](Model& m, const Batch& b) mutable { return LossOutput{f(m, b), {}, {}}; };
    }
  }

  void create_optimizer_and_scheduler(int64_t max_steps) {
    if (!optimizer_) {
      if (scheduler_) throw Error("set_scheduler() needs the optimizer it drives: call set_optimizer() too");
      optimizer_ = create_optimizer(args_, *module_);
    }
    if (!scheduler_ || owns_scheduler_) {
      scheduler_ = get_scheduler(args_.lr_scheduler_type, *optimizer_,
                                 num_warmup_steps(args_.warmup_steps, args_.warmup_ratio, max_steps), max_steps,
                                 args_.lr_scheduler_kwargs);
      owns_scheduler_ = true;
    }
    if (args_.fp16 && device_.is_cuda() && !scaler_) scaler_ = std::make_unique<detail::GradScaler>(device_);
  }

  std::vector<torch::Tensor> trainable_parameters() const {
    std::vector<torch::Tensor> params;
    for (const auto& p : module_->parameters())
      if (p.requires_grad()) params.push_back(p);
    return params;
  }

  torch::Tensor checked_loss(const LossOutput& out) const {
    const torch::Tensor& loss = out.loss;
    if (!loss.defined()) throw Error("loss_fn returned an undefined tensor at step " + std::to_string(state_.global_step + 1));
    if (loss.numel() != 1)
      throw Error("loss_fn must return a scalar tensor, got shape " + c10::str(loss.sizes()) + " at step " +
                  std::to_string(state_.global_step + 1) + " (reduce it, e.g. with .mean())");
    if (!loss.requires_grad())
      throw Error("loss_fn returned a tensor that does not require grad at step " +
                  std::to_string(state_.global_step + 1) + " (was it computed under NoGradGuard or detached?)");
    return loss.dim() == 0 ? loss : loss.reshape({});
  }

  void run_epoch(const detail::BatchPlan<TrainData>& plan, int64_t epoch, int64_t first_micro_step) {
    const int64_t steps_in_epoch = plan.num_batches();
    const int64_t ga = args_.gradient_accumulation_steps;
    const auto params = trainable_parameters();
    const bool autocast = device_.is_cuda() && (args_.fp16 || args_.bf16);
    auto& ctx = handler_.context();
    torch::Tensor last_loss;
    detail::BatchPrefetcher<TrainData> prefetch(plan, first_micro_step, args_.dataloader_num_workers);
    for (int64_t step = first_micro_step; step < steps_in_epoch; ++step) {
      const int64_t group_start = step - step % ga;
      const int64_t group_size = std::min(ga, steps_in_epoch - group_start);
      if (step % ga == 0) handler_.on_step_begin(args_, state_, control_);

      const Batch batch = detail::to_device(prefetch.next(), device_);
      torch::Tensor loss;
      {
        detail::AutocastScope scope(autocast, args_.bf16 ? torch::kBFloat16 : torch::kHalf);
        loss = checked_loss(loss_fn_(model_, batch));
        if (group_size > 1) loss = loss / static_cast<double>(group_size);  // no extra graph node without accumulation
      }
      (scaler_ ? scaler_->scale(loss) : loss).backward();
      last_loss = loss.detach();
      ctx.loss = &last_loss;
      accumulate_loss(last_loss);
      session_.samples += detail::batch_size_of(batch);
      count_tokens(batch);
      if constexpr (detail::has_floating_point_ops<Model, Batch>::value)
        state_.total_flos += static_cast<double>(model_->floating_point_ops(batch));

      const bool sync = (step + 1) % ga == 0 || step + 1 == steps_in_epoch;
      if (sync) {
        if (scaler_) scaler_->unscale(params);
        if (args_.max_grad_norm > 0) session_.grad_norm = clip_grad_norm(params, args_.max_grad_norm);
        handler_.on_pre_optimizer_step(args_, state_, control_);
        const bool stepped = scaler_ ? scaler_->step(*optimizer_) : (optimizer_->step(), true);
        handler_.on_optimizer_step(args_, state_, control_);
        session_.learning_rate = scheduler_->get_last_lr().at(0);
        if (stepped) scheduler_->step();
        optimizer_->zero_grad();
        state_.global_step += 1;
        state_.epoch = static_cast<double>(epoch) + static_cast<double>(step + 1) / static_cast<double>(steps_in_epoch);
        handler_.on_step_end(args_, state_, control_);
        maybe_log_save_evaluate();
      } else {
        handler_.on_substep_end(args_, state_, control_);
      }
      if (control_.should_epoch_stop || control_.should_training_stop) break;
    }
    ctx.loss = nullptr;
  }

  // Element counts are known on the host; non-padding counts are summed on the device and read with the logs.
  void count_tokens(const Batch& batch) {
    const TokenCounting counting = args_.include_num_input_tokens_seen;
    if (counting == TokenCounting::no && !args_.include_tokens_per_second) return;
    const int64_t elements = batch.data.numel();
    session_.tokens += elements;
    if (session_.non_padding_tokens.defined())
      session_.non_padding_tokens.add_((batch.data != *pad_token_id_).sum());
    else if (counting != TokenCounting::no)
      state_.num_input_tokens_seen += elements;
  }

  void read_token_count() {
    auto& pending = session_.non_padding_tokens;
    if (!pending.defined()) return;
    state_.num_input_tokens_seen += static_cast<int64_t>(detail::to_host(pending));
    pending.zero_();
  }

  // One add on the device per micro-step and nothing read back. HF's logging_nan_inf_filter (a non-finite step
  // loss adds the running mean instead of poisoning the sum) is applied when the sum is read: only a non-finite sum
  // needs the micro-step losses replayed, so the common case costs no extra kernels.
  void accumulate_loss(const torch::Tensor& loss) {
    session_.loss_sum.add_(loss);
    if (!args_.logging_nan_inf_filter) return;
    session_.pending.push_back({loss, state_.global_step});
    if (session_.pending.size() >= 4096) window_loss_sum();  // bounds what is kept
  }

  // The filtered loss sum since the last log, read back once (twice when a replay is needed).
  double window_loss_sum() {
    auto& s = session_;
    float sum = static_cast<float>(detail::to_host(s.loss_sum));
    if (!std::isfinite(sum) && !s.pending.empty()) {
      std::vector<torch::Tensor> losses;
      for (const auto& p : s.pending) losses.push_back(p.loss.to(torch::kFloat));
      const torch::Tensor host = torch::stack(losses).cpu();
      ++detail::host_reads();
      sum = s.window_base;
      for (std::size_t i = 0; i < s.pending.size(); ++i) {
        const float l = host[static_cast<int64_t>(i)].item<float>();
        const auto steps = static_cast<float>(1 + s.pending[i].global_step - s.last_logged);
        sum += std::isfinite(l) ? l : sum / steps;
      }
      s.loss_sum.fill_(sum);
    }
    s.window_base = sum;
    s.pending.clear();
    return sum;
  }

  void reset_loss_window() {
    session_.loss_sum.zero_();
    session_.window_base = 0;
    session_.pending.clear();
  }

  void maybe_log_save_evaluate() {
    if (control_.should_log && state_.global_step > session_.last_logged) {
      const double loss_sum = window_loss_sum();
      reset_loss_window();
      Logs logs = Logs::object();
      logs["loss"] = loss_sum / static_cast<double>(state_.global_step - session_.last_logged);
      if (args_.max_grad_norm > 0 && session_.grad_norm.defined()) logs["grad_norm"] = detail::to_host(session_.grad_norm);
      logs["learning_rate"] = session_.learning_rate;
      session_.loss_total += loss_sum;
      session_.last_logged = state_.global_step;
      log_in_place(logs, true);
    }
    if (control_.should_evaluate) {
      const Logs metrics = evaluate_all();
      if (auto* plateau = dynamic_cast<ReduceLROnPlateau*>(scheduler_.get()))
        plateau->step(metric_value(metrics));
      const bool is_new_best = update_best_metric(metrics);
      if (args_.save_strategy == SaveStrategy::best) control_.should_save = is_new_best;
    }
    if (control_.should_save) {
      const auto dir = save_checkpoint();
      handler_.on_save(args_, state_, control_, dir);
    }
  }

  std::string metric_key() const {
    const std::string& m = *args_.metric_for_best_model;
    return m.rfind("eval_", 0) == 0 ? m : "eval_" + m;
  }

  double metric_value(const Logs& metrics) const {
    const std::string key = metric_key();
    if (!metrics.contains(key) || !metrics.at(key).is_number()) {
      std::string available;
      for (const auto& item : metrics.items()) available += (available.empty() ? "" : ", ") + item.key();
      throw Error("--metric_for_best_model \"" + *args_.metric_for_best_model + "\": the evaluation at step " +
                  std::to_string(state_.global_step) + " produced no numeric \"" + key + "\" (it produced: " +
                  available + "); return it from compute_metrics or pick one of these");
    }
    return metrics.at(key).get<double>();
  }

  // HF's _determine_best_metric, with save_strategy "best" recording the best step too (PR #44583).
  bool update_best_metric(const Logs& metrics) {
    if (!args_.metric_for_best_model) return false;
    const double value = metric_value(metrics);
    const bool greater = args_.greater_is_better.value_or(true);
    if (!state_.best_metric) state_.best_metric = greater ? -INFINITY : INFINITY;
    const bool better = greater ? value > *state_.best_metric : value < *state_.best_metric;
    if (!better) return false;
    state_.best_metric = value;
    if (args_.save_strategy != SaveStrategy::no) state_.best_global_step = state_.global_step;
    return true;
  }

  // Every eval dataset in turn; their metrics merged (HF's _evaluate over a dict of datasets).
  Logs evaluate_all() {
    Logs merged = Logs::object();
    for (const auto& [name, dataset] : eval_sets_)
      merged.update(evaluate_impl(dataset, name.empty() ? "eval" : "eval_" + name));
    return merged;
  }

  // Memory metrics join the returned metrics after on_evaluate, so they are not in log_history (HF).
  Logs evaluate_impl(const EvalData& dataset, const std::string& prefix) {
    memory_.start("eval", device_);
    Pass pass = run_prediction_pass(dataset, prefix, static_cast<bool>(compute_metrics_));
    log_in_place(pass.metrics, false);
    handler_.on_evaluate(args_, state_, control_, pass.metrics, prefix);
    memory_.stop_and_update_metrics("eval", pass.metrics);
    return pass.metrics;
  }

  // The evaluation loop shared by evaluate() and predict(): loss is the exact mean over samples (HF weights a
  // short last batch as a full one).
  Pass run_prediction_pass(const EvalData& dataset, const std::string& prefix, bool gather) {
    const auto start = std::chrono::steady_clock::now();
    detail::BatchPlan<EvalData> plan(dataset, args_.per_device_eval_batch_size, false, std::nullopt);
    if (plan.num_samples() == 0) throw Error(prefix + " dataset is empty: there is nothing to evaluate");
    eval_loader_info_ = LoaderInfo{plan.num_batches(), plan.num_samples(), args_.per_device_eval_batch_size};
    handler_.context().eval_dataloader = &eval_loader_info_;

    const bool was_training = module_->is_training();
    module_->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
    detail::EvalGatherer predictions(args_.eval_accumulation_steps), labels(args_.eval_accumulation_steps);
    const bool autocast = device_.is_cuda() && (args_.fp16 || args_.bf16);
    for (int64_t k = 0; k < plan.num_batches(); ++k) {
      const Batch batch = detail::to_device(plan.batch(k), device_);
      LossOutput out;
      {
        detail::AutocastScope scope(autocast, args_.bf16 ? torch::kBFloat16 : torch::kHalf);
        out = loss_fn_(model_, batch);
      }
      if (!out.loss.defined() || out.loss.numel() != 1)
        throw Error("loss_fn must return a scalar tensor during evaluation (batch " + std::to_string(k) + ")");
      loss_sum += out.loss.detach().to(torch::kDouble).reshape({}) * static_cast<double>(detail::batch_size_of(batch));
      if (gather) {
        if (out.predictions.defined()) predictions.add(out.predictions);
        torch::Tensor l = out.labels.defined() ? out.labels : detail::labels_of(batch);
        if (l.defined()) labels.add(l);
        predictions.step(k + 1);
        labels.step(k + 1);
      }
      handler_.on_prediction_step(args_, state_, control_);
    }
    if (was_training) module_->train();

    Pass pass;
    pass.predictions = predictions.result();
    pass.labels = labels.result();
    pass.metrics = Logs::object();
    pass.metrics[prefix + "_loss"] = detail::to_host(loss_sum) / static_cast<double>(plan.num_samples());
    if (compute_metrics_) {
      const Logs user = compute_metrics_(EvalPrediction{pass.predictions, pass.labels});
      for (const auto& item : user.items())
        pass.metrics[item.key().rfind(prefix + "_", 0) == 0 ? item.key() : prefix + "_" + item.key()] = item.value();
    }
    detail::add_speed_metrics(pass.metrics, prefix, detail::seconds_since(start), plan.num_samples(),
                              plan.num_batches());
    return pass;
  }

  // ---- checkpoints ----

 public:
  /// What a failed periodic checkpoint save does: raise (the default, as HF) stops training with the
  /// CheckpointError; warn logs one warning naming the checkpoint and the cause, and training goes on.
  void set_save_error_policy(checkpoint::SaveErrorPolicy policy) { save_error_policy_ = policy; }

 private:
  checkpoint::SaveErrorPolicy save_error_policy_ = checkpoint::SaveErrorPolicy::raise;

  std::filesystem::path save_checkpoint() {
    const auto best_before = state_.best_model_checkpoint;
    try {
      const auto dir = checkpoint::save(args_.output_dir, state_.global_step,
                                        [&](const std::filesystem::path& tmp) { write_checkpoint_files(tmp); });
      checkpoint::rotate(args_.output_dir, args_.save_total_limit, state_.best_model_checkpoint);
      return dir;
    } catch (const CheckpointError& e) {
      state_.best_model_checkpoint = best_before;  // a best step whose save failed has no checkpoint to point at
      if (save_error_policy_ == checkpoint::SaveErrorPolicy::raise) throw;
      log::warning("{}; training goes on without this checkpoint", e.what());
      return checkpoint::dir_for(args_.output_dir, state_.global_step);
    }
  }

  void write_checkpoint_files(const std::filesystem::path& dir) {
    checkpoint::save_model_state(*module_, dir / checkpoint::model_file);
    // A new best records itself: evaluation precedes saving in the same step (HF §8.6).
    if (state_.best_global_step && args_.save_strategy != SaveStrategy::no) {
      const auto best_dir = checkpoint::dir_for(args_.output_dir, *state_.best_global_step);
      if (*state_.best_global_step == state_.global_step || checkpoint::is_complete(best_dir))
        state_.best_model_checkpoint = best_dir.string();
    }
    if (!args_.save_only_model)
      checkpoint::save_training_state(dir, *optimizer_, *scheduler_, scaler_.get(), loss_progress());
    state_.stateful_callbacks = handler_.states(control_);
    read_token_count();
    checkpoint::save_state_and_args(dir, state_, args_);
  }

  checkpoint::Progress loss_progress() { return {window_loss_sum(), session_.loss_total, session_.last_logged}; }

  checkpoint::Targets checkpoint_targets() {
    CallbackHandler* callbacks = args_.restore_callback_states_from_checkpoint ? &handler_ : nullptr;
    return {*module_, *optimizer_, *scheduler_, scaler_.get(), callbacks, &control_};
  }

  // The checkpoint is read and checked whole before anything is loaded, so a refused one changes nothing.
  void resume_from(const std::filesystem::path& dir, int64_t max_steps) {
    const checkpoint::Targets targets = checkpoint_targets();
    checkpoint::Checkpoint loaded = checkpoint::read(dir, targets);
    checkpoint::apply(loaded, targets);
    if (loaded.state.train_batch_size && *loaded.state.train_batch_size != args_.per_device_train_batch_size)
      log::warning("resuming from {} with --per_device_train_batch_size {} although it was trained with {}: the "
                   "data position will not match",
                   dir.string(), args_.per_device_train_batch_size, *loaded.state.train_batch_size);

    // Interval steps follow the current arguments (HF keeps the checkpoint's, #28867); say so when they differ.
    const TrainerState current = state_;
    state_ = std::move(loaded.state);
    state_.compute_steps(args_, max_steps);
    if (state_.logging_steps != current.logging_steps || state_.eval_steps != current.eval_steps ||
        state_.save_steps != current.save_steps)
      log::info("resuming with this run's logging/eval/save steps");
    session_.loss_sum.fill_(loaded.progress.loss_since_last_log);
    session_.window_base = static_cast<float>(loaded.progress.loss_since_last_log);
    session_.loss_total = loaded.progress.loss_total;
    session_.last_logged = loaded.progress.last_logged_step;
  }

  Model model_;
  std::shared_ptr<torch::nn::Module> module_;
  TrainingArguments args_;
  TrainData train_data_;
  NamedDatasets<EvalData> eval_sets_;
  LossFn loss_fn_;
  MetricsFn compute_metrics_;
  torch::Device device_{torch::kCPU};
  detail::MemoryTracker memory_{!args_.skip_memory_metrics};
  std::optional<int64_t> pad_token_id_;

  CallbackHandler handler_;
  TrainerState state_;
  TrainerControl control_;
  std::shared_ptr<torch::optim::Optimizer> optimizer_;
  std::shared_ptr<LRScheduler> scheduler_;
  bool owns_scheduler_ = false;
  std::unique_ptr<detail::GradScaler> scaler_;
  Session session_;
  LoaderInfo train_loader_info_;
  LoaderInfo eval_loader_info_;
};

template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction) -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction, typename MetricsFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction, MetricsFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction, std::function<Logs(const EvalPrediction&)>,
        CallbackList) -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, LossFunction) -> Trainer<Model, TrainData, TrainData>;
template <typename Model, typename TrainData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, LossFunction, CallbackList) -> Trainer<Model, TrainData, TrainData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction, typename MetricsFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction, MetricsFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction,
        std::function<Logs(const EvalPrediction&)>, CallbackList) -> Trainer<Model, TrainData, EvalData>;

}  // namespace torchfit
