// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cmath>
#include <cstdlib>
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
#include "torchfit/callbacks/terminate_on_nan.hpp"
#include "torchfit/checkpoint.hpp"
#include "torchfit/cpu_allocator.hpp"
#include "torchfit/data.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/detail/host_reads.hpp"
#include "torchfit/detail/memory_tracker.hpp"
#include "torchfit/detail/model_traits.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/speed_metrics.hpp"
#include "torchfit/detail/stop_signals.hpp"
#include "torchfit/distributed/agreement.hpp"
#include "torchfit/distributed/collectives.hpp"
#include "torchfit/distributed/data_parallel.hpp"
#include "torchfit/distributed/world.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"
#include "torchfit/loop/best_metric.hpp"
#include "torchfit/loop/evaluation_loop.hpp"
#include "torchfit/loop/loop_context.hpp"
#include "torchfit/loop/loss_window.hpp"
#include "torchfit/loop/optimization_step.hpp"
#include "torchfit/loop/token_counter.hpp"
#include "torchfit/loop/training_plan.hpp"
#include "torchfit/model_summary.hpp"
#include "torchfit/optimizers.hpp"
#include "torchfit/outputs.hpp"
#include "torchfit/report_to.hpp"
#include "torchfit/schedulers.hpp"
#include "torchfit/seed.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Several eval datasets, evaluated in this order with metrics prefixed `eval_<name>_` (HF's dict of eval
/// datasets).
template <typename Data>
using NamedDatasets = std::vector<std::pair<std::string, Data>>;

/// The training loop (HF's Trainer): train(), evaluate() and predict() firing HF's events in HF's order, with
/// TrainerState kept as HF keeps it, checkpoints and exact resume.
///
/// `Model` is a module holder (`Net`, i.e. torch::nn::ModuleHolder<NetImpl>) or a std::shared_ptr to a module;
/// `TrainData`/`EvalData` are TensorPairDataset, std::pair<Tensor, Tensor>, TensorDictDataset, map-style torch
/// datasets, StreamingDataset (which needs --max_steps) or Collated over one of these (see docs/data.md).
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
                eval_dataset ? NamedDatasets<EvalData>{{"", std::move(*eval_dataset)}}
                             : NamedDatasets<EvalData>{},
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
      throw ArgumentError(
          fmt::format("--eval_strategy \"{}\" needs an eval dataset; pass one to the Trainer or use "
                      "--eval_strategy no",
                      to_string(args_.eval_strategy)));
    if (args_.eval_on_start && eval_sets_.empty())
      throw ArgumentError(
          "--eval_on_start needs an eval dataset; pass one to the Trainer or drop --eval_on_start");
    check_eval_dataset_names();
    detail::seed_trainer(args_.seed, args_.full_determinism);  // HF: set_seed, or enable_full_determinism
    device_ = distributed::join(args_);  // this rank's GPU or the CPU; the job's process group when launched
    distributed::mark_process(state_);
    memory_.start("init", device_);
    if ((args_.fp16 || args_.bf16) && !device_.is_cuda())
      log::warning("--{} needs CUDA; training in fp32 on the CPU", args_.fp16 ? "fp16" : "bf16");
    module_->to(device_);
    if (device_.is_cpu() && args_.tune_cpu_allocator) detail::tune_cpu_allocator_for_training();

    handler_.add_callback<DefaultFlowCallback>();
    if (args_.terminate_on_nan) handler_.add_callback<TerminateOnNanCallback>();
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
      : Trainer(std::move(model), std::move(args), std::move(train_dataset), std::nullopt, std::move(loss_fn),
                {}, callbacks) {}

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
    log::info("{}", model_summary(*module_));
    detail::StopSignals stop_signals;
    // Sizes, optimizer and scheduler (HF's set_initial_training_values, create_optimizer_and_scheduler).
    const distributed::World& world = distributed::world();
    const TrainingPlan plan = TrainingPlan::make(args_, detail::num_samples_of(train_data_), world.size);
    log::info("{} updates of {} samples ({} per process × {} accumulated × {} processes)", plan.max_steps,
              plan.total_batch_size, plan.batch_size, args_.gradient_accumulation_steps, world.size);
    create_optimizer_and_scheduler(plan.max_steps);
    // A fresh state, replaced by the checkpoint's when resuming; on_train_begin; eval_on_start.
    interrupted_by_ = 0;
    begin_training(plan, resume_from_checkpoint ? resume_from_checkpoint : args_.resume_from_checkpoint);
    // The epochs, each ending with on_epoch_end and its log/evaluate/save pass; a resume skips what was trained.
    const int64_t epochs_trained = state_.global_step / plan.updates_per_epoch;
    const int64_t skip_in_first_epoch =
        args_.ignore_data_skip
            ? 0
            : (state_.global_step % plan.updates_per_epoch) * args_.gradient_accumulation_steps;
    const bool done = control_.should_training_stop || state_.global_step >= plan.max_steps;
    for (int64_t epoch = epochs_trained; epoch < plan.num_train_epochs && !done; ++epoch) {
      handler_.on_epoch_begin(args_, state_, control_);
      const int64_t first = epoch == epochs_trained ? skip_in_first_epoch : 0;
      detail::BatchPrefetcher<TrainData> batches(
          train_data_, plan.batch_size, args_.dataloader_drop_last,
          static_cast<uint64_t>(args_.data_seed.value_or(args_.seed) + epoch), first,
          args_.dataloader_num_workers, distributed::Shard{world.rank, world.size},
          /*pin=*/device_.is_cuda() && args_.dataloader_pin_memory);
      run_epoch(batches, plan.batches_per_epoch, epoch, first, stop_signals);
      handler_.on_epoch_end(args_, state_, control_);
      maybe_log_save_evaluate();
      if (control_.should_training_stop) break;
    }
    // The best model, the summary log and on_train_end; then, after a stop signal, the process ends.
    TrainOutput out = finish_training();
    if (interrupted_by_ && exit_on_signal_) exit_after_signal(interrupted_by_);
    return out;
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
    auto result = evaluation_.run(dataset, metric_key_prefix, /*gather=*/true);
    PredictionOutput out{result.predictions, result.labels, std::move(result.metrics)};
    handler_.on_predict(args_, state_, control_, out.metrics, metric_key_prefix);
    memory_.stop_and_update_metrics("test", out.metrics);
    return out;
  }

  /// Writes state.json of the trainer to `<output_dir>/trainer_state.json` (HF's save_state; includes the
  /// final summary entry, which checkpoints never contain). Only the world process zero writes, as HF.
  void save_state() const {
    if (!state_.is_world_process_zero) return;
    std::filesystem::create_directories(args_.output_dir);
    state_.save_to_json(std::filesystem::path(args_.output_dir) / checkpoint::state_file);
  }

  /// Saves the model weights as `<dir>/model.safetensors` (default: output_dir), on the world process zero only.
  void save_model(const std::optional<std::string>& dir = std::nullopt) const {
    if (!state_.is_world_process_zero) return;
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

  /// After SIGINT or SIGTERM stopped training cleanly (the current update finished, a checkpoint written when
  /// saving is on, the trackers ended), train() ends the process with 128 + the signal's number, as a shell
  /// expects (130, 143). With false, train() returns instead and interrupted_by() names the signal.
  void set_exit_on_signal(bool exit) { exit_on_signal_ = exit; }
  /// The signal that stopped the last train() call, or 0.
  int interrupted_by() const { return interrupted_by_; }

 private:
  // ---- the phases of train() ----

  // Everything before the first epoch, in HF's order: a fresh state (or the checkpoint's), this call's
  // bookkeeping, the callbacks' references, on_train_begin, then eval_on_start.
  void begin_training(const TrainingPlan& plan, const std::optional<std::string>& resume_from_checkpoint) {
    state_ = TrainerState{};
    state_.train_batch_size = plan.batch_size;
    state_.compute_steps(args_, plan.max_steps);
    state_.epoch = 0.0;
    loss_.start(device_, args_.logging_nan_inf_filter);
    checkpoint::remove_leftovers(args_.output_dir);
    if (resume_from_checkpoint)
      resume_from(*resume_from_checkpoint == "last" ? checkpoint::last(args_.output_dir)
                                                    : std::filesystem::path(*resume_from_checkpoint),
                  plan.max_steps);
    session_ = Session{std::chrono::steady_clock::now(), state_.global_step, 0, {}};
    tokens_.start(args_, pad_token_id_, device_, state_.num_input_tokens_seen);
    optimization_.emplace(*optimizer_, *scheduler_, scaler_.get(), trainable_parameters(),
                          args_.max_grad_norm);
    data_parallel_.start(*module_, trainable_parameters(), args_);

    train_loader_info_ = LoaderInfo{plan.batches_per_epoch, plan.num_samples, plan.batch_size};
    auto& ctx = handler_.context();
    ctx.optimizer = optimizer_.get();
    ctx.lr_scheduler = scheduler_.get();
    ctx.train_dataloader = &train_loader_info_;
    state_.init_training_references(plan.max_steps, plan.num_train_epochs);
    distributed::mark_process(state_);
    optimizer_->zero_grad();

    const std::string recorded_stop = control_.should_training_stop ? control_.stop_reason : std::string();
    handler_.on_train_begin(args_, state_, control_);
    if (!recorded_stop.empty()) {
      log::info("Not training further: the checkpoint recorded a stop ({})", recorded_stop);
      control_.stop_training(recorded_stop);
    }
    distributed::agree(control_);
    if (args_.eval_on_start && !control_.should_training_stop) evaluate_all();
    module_->train();
  }

  // One epoch's micro-batches from `first_micro_step` on (HF's inner loop): a training step each, an optimizer
  // update at the end of each accumulation group (or of the epoch), then on_step_end and its log/evaluate/save
  // pass. A stop flag ends the epoch after any micro-batch; a stop signal after the current update. On CUDA the
  // next batch's copy to the device is queued before this step's work, so that it never waits for its data.
  void run_epoch(detail::BatchPrefetcher<TrainData>& batches, int64_t steps_in_epoch, int64_t epoch,
                 int64_t first_micro_step, const detail::StopSignals& stop_signals) {
    const int64_t ga = args_.gradient_accumulation_steps;
    const auto fetch = [&] { return detail::to_device(batches.next(), device_); };
    std::optional<Batch> ahead;
    for (int64_t step = first_micro_step; step < steps_in_epoch; ++step) {
      if (step % ga == 0) handler_.on_step_begin(args_, state_, control_);
      const int64_t group_start = step - step % ga;
      const bool ends_update = (step + 1) % ga == 0 || step + 1 == steps_in_epoch;
      const Batch batch = ahead ? std::move(*ahead) : fetch();
      ahead.reset();
      if (device_.is_cuda() && step + 1 < steps_in_epoch) ahead = fetch();
      training_step(batch, std::min(ga, steps_in_epoch - group_start), ends_update);
      if (ends_update) {
        optimization_->run(handler_, args_, state_, control_);
        state_.global_step += 1;
        state_.epoch =
            static_cast<double>(epoch) + static_cast<double>(step + 1) / static_cast<double>(steps_in_epoch);
        handler_.on_step_end(args_, state_, control_);
        if (const int signal = stop_signals.received()) stop_for_signal(signal);
        maybe_log_save_evaluate();
      } else {
        handler_.on_substep_end(args_, state_, control_);
        distributed::agree(control_);
      }
      if (control_.should_epoch_stop || control_.should_training_stop) break;
    }
    handler_.context().loss = nullptr;
  }

  // HF's training_step: forward and backward of one micro-batch, its loss divided by the size of its accumulation
  // group so that the group's gradients and summed losses are means; nothing is read back from the device. The
  // backward of an update's last micro-batch averages the gradients over the processes. `batch` is on the device.
  void training_step(const Batch& batch, int64_t group_size, bool ends_update) {
    data_parallel_.before_forward();
    torch::Tensor loss;
    {
      detail::AutocastScope scope(device_.is_cuda() && (args_.fp16 || args_.bf16),
                                  args_.bf16 ? torch::kBFloat16 : torch::kHalf);
      loss = checked_loss(loss_fn_(model_, batch));
      if (group_size > 1)
        loss = loss / static_cast<double>(group_size);  // no extra graph node without accumulation
    }
    data_parallel_.backward(loss, ends_update, [&] { optimization_->backward(loss); });
    session_.last_loss = loss.detach();
    handler_.context().loss = &session_.last_loss;
    loss_.add(session_.last_loss, state_.global_step);
    session_.samples += detail::batch_size_of(batch);
    tokens_.count(detail::input_of(batch), state_.num_input_tokens_seen);
    if constexpr (detail::has_floating_point_ops<Model, Batch>::value)
      state_.total_flos += static_cast<double>(model_->floating_point_ops(batch));
  }

  // HF's _maybe_log_save_evaluate, after every on_step_end and on_epoch_end. Every process acts on the same flags.
  void maybe_log_save_evaluate() {
    distributed::agree(control_);
    const bool acts = control_.should_log || control_.should_evaluate || control_.should_save;
    if (control_.should_log && state_.global_step > loss_.last_logged()) log_training_loss();
    if (control_.should_evaluate) {
      const Logs metrics = evaluate_all();
      if (auto* plateau = dynamic_cast<ReduceLROnPlateau*>(scheduler_.get()))
        plateau->step(BestMetric::value(args_, metrics, state_.global_step));
      const bool is_new_best = BestMetric::update(args_, state_, metrics);
      if (args_.save_strategy == SaveStrategy::best) control_.should_save = is_new_best;
    }
    if (control_.should_save) {
      const auto dir = save_checkpoint();
      handler_.on_save(args_, state_, control_, dir);
    }
    if (acts) distributed::agree(control_);  // what on_log, on_evaluate or on_save decided
  }

  void log_training_loss() {
    Logs logs = Logs::object();
    logs["loss"] =
        distributed::mean_over_ranks(loss_.close(state_.global_step), "averaging the training loss");
    const torch::Tensor& grad_norm = optimization_->grad_norm();
    if (args_.max_grad_norm > 0 && grad_norm.defined()) logs["grad_norm"] = detail::to_host(grad_norm);
    logs["learning_rate"] = optimization_->learning_rate();
    log_in_place(logs, true);
  }

  // After the epochs: the best model when asked, the summary log (HF's train_loss over the whole training, rates
  // over this call's work: HF divides totals since step 0 by this call's time, #40560), on_train_end.
  TrainOutput finish_training() {
    if (args_.load_best_model_at_end && state_.best_model_checkpoint) {
      log::notice("Loading best model from {} (score: {}).", *state_.best_model_checkpoint,
                  detail::python_float_repr(state_.best_metric.value_or(NAN)));
      checkpoint::load_model_state(
          *module_, std::filesystem::path(*state_.best_model_checkpoint) / checkpoint::model_file);
    }
    const double train_loss = distributed::mean_over_ranks(loss_.total(), "averaging the training loss") /
                              static_cast<double>(std::max<int64_t>(state_.global_step, 1));
    Logs metrics = Logs::object();
    detail::add_speed_metrics(
        metrics, "train", detail::seconds_since(session_.start), session_.samples * distributed::world().size,
        state_.global_step - session_.start_step,
        args_.include_tokens_per_second ? std::optional<int64_t>(tokens_.session_tokens()) : std::nullopt);
    metrics["total_flos"] = state_.total_flos;
    metrics["train_loss"] = train_loss;
    memory_.stop_and_update_metrics("train", metrics);
    log_in_place(metrics, false);
    handler_.on_train_end(args_, state_, control_);
    return TrainOutput{state_.global_step, train_loss, metrics};
  }

  // SIGINT or SIGTERM: stop after this update, with a checkpoint to resume from when saving is on. No stop
  // reason is recorded: unlike an early stop, a resumed run goes on training.
  void stop_for_signal(int signal) {
    interrupted_by_ = signal;
    control_.should_training_stop = true;
    if (args_.save_strategy != SaveStrategy::no) control_.should_save = true;
  }

  [[noreturn]] void exit_after_signal(int signal) {
    const std::string saved = args_.save_strategy == SaveStrategy::no
                                  ? "no checkpoint written (--save_strategy no)"
                                  : "checkpoint in " +
                                        checkpoint::dir_for(args_.output_dir, state_.global_step).string() +
                                        " (resume with --resume_from_checkpoint last)";
    log::warning("training stopped by {} after step {}; {}", detail::StopSignals::name(signal),
                 state_.global_step, saved);
    std::exit(128 + signal);
  }

  // ---- logging and evaluation ----

  // HF's log(logs, start_time): the caller's `logs` get epoch and the token count too; training logs also get
  // this call's token rate.
  void log_in_place(Logs& logs, bool with_token_rate) {
    if (state_.epoch) logs["epoch"] = state_.epoch_json();
    if (args_.include_num_input_tokens_seen != TokenCounting::no) {
      tokens_.flush(state_.num_input_tokens_seen);
      logs["num_input_tokens_seen"] = state_.num_input_tokens_seen;
      if (with_token_rate)
        detail::add_speed_metrics(logs, "train", detail::seconds_since(session_.start), std::nullopt,
                                  std::nullopt, state_.num_input_tokens_seen - tokens_.seen_at_start());
    }
    Logs entry = logs;
    entry["step"] = state_.global_step;
    state_.log_history.push_back(std::move(entry));
    handler_.on_log(args_, state_, control_, logs);
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
    Logs metrics = evaluation_.run(dataset, prefix, static_cast<bool>(compute_metrics_)).metrics;
    log_in_place(metrics, false);
    handler_.on_evaluate(args_, state_, control_, metrics, prefix);
    memory_.stop_and_update_metrics("eval", metrics);
    return metrics;
  }

  // ---- set-up ----

  // What one train() call counts besides the loss window and tokens.
  struct Session {
    std::chrono::steady_clock::time_point start;  // of this train() call
    int64_t start_step = 0;                       // global_step when it began (after a resume)
    int64_t samples = 0;                          // samples trained on in this call
    torch::Tensor last_loss;                      // what step events see as ctx.loss
  };

  void check_eval_dataset_names() const {
    for (std::size_t i = 0; i < eval_sets_.size(); ++i) {
      const std::string& name = eval_sets_[i].first;
      if (eval_sets_.size() > 1 && name.empty())
        throw ArgumentError(
            fmt::format("eval dataset {} has no name: name every one of several eval datasets", i));
      for (std::size_t j = 0; j < i; ++j)
        if (eval_sets_[j].first == name)
          throw ArgumentError(fmt::format("two eval datasets are named \"{}\"", name));
    }
  }

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
                                 num_warmup_steps(args_.warmup_steps, args_.warmup_ratio, max_steps),
                                 max_steps, args_.lr_scheduler_kwargs);
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
    const int64_t step = state_.global_step + 1;
    if (!loss.defined()) throw Error(fmt::format("loss_fn returned an undefined tensor at step {}", step));
    if (loss.numel() != 1)
      throw Error(
          fmt::format("loss_fn must return a scalar tensor, got shape {} at step {} (reduce it, e.g. with "
                      ".mean())",
                      c10::str(loss.sizes()), step));
    if (!loss.requires_grad())
      throw Error(fmt::format(
          "loss_fn returned a tensor that does not require grad at step {} (was it computed under "
          "NoGradGuard or detached?)",
          step));
    return loss.dim() == 0 ? loss : loss.reshape({});
  }

  // ---- checkpoints ----

 public:
  /// What a failed periodic checkpoint save does: raise (the default, as HF) stops training with the
  /// CheckpointError; warn logs one warning naming the checkpoint and the cause, and training goes on.
  void set_save_error_policy(checkpoint::SaveErrorPolicy policy) { save_error_policy_ = policy; }

 private:
  checkpoint::SaveErrorPolicy save_error_policy_ = checkpoint::SaveErrorPolicy::raise;

  // Every process takes part (the loss sums averaged, each one's generator states collected); the world process
  // zero writes (HF's should_save) and tells the others how it went, which also holds them until the checkpoint
  // is complete.
  std::filesystem::path save_checkpoint() {
    const auto best_before = state_.best_model_checkpoint;
    checkpoint::Progress progress = loss_.progress();
    const auto sums = distributed::sum_over_ranks({progress.loss_since_last_log, progress.loss_total},
                                                  "averaging the loss sums for the checkpoint");
    progress.loss_since_last_log = sums[0] / static_cast<double>(distributed::world().size);
    progress.loss_total = sums[1] / static_cast<double>(distributed::world().size);
    const std::vector<std::string> rng_states =
        args_.save_only_model
            ? std::vector<std::string>()
            : distributed::all_gather_bytes(checkpoint::rng_state_bytes(checkpoint::capture_rng_state()),
                                            "collecting the generator states");
    tokens_.flush(state_.num_input_tokens_seen);
    json outcome = json::object();
    if (state_.is_world_process_zero) {
      try {
        checkpoint::save(args_.output_dir, state_.global_step, [&](const std::filesystem::path& tmp) {
          write_checkpoint_files(tmp, progress, rng_states);
        });
        checkpoint::rotate(args_.output_dir, args_.save_total_limit, state_.best_model_checkpoint);
      } catch (const CheckpointError& e) {
        outcome["error"] = e.what();
      }
      if (state_.best_model_checkpoint) outcome["best"] = *state_.best_model_checkpoint;
    }
    outcome = json::parse(distributed::from_rank_zero(outcome.dump(), "waiting for the checkpoint"));
    if (outcome.contains("best")) state_.best_model_checkpoint = outcome["best"].get<std::string>();
    if (outcome.contains("error")) {
      state_.best_model_checkpoint =
          best_before;  // a best step whose save failed has no checkpoint to point at
      const std::string error = outcome["error"].get<std::string>();
      if (save_error_policy_ == checkpoint::SaveErrorPolicy::raise) throw CheckpointError(error);
      log::warning("{}; training goes on without this checkpoint", error);
    }
    return checkpoint::dir_for(args_.output_dir, state_.global_step);
  }

  void write_checkpoint_files(const std::filesystem::path& dir, const checkpoint::Progress& progress,
                              const std::vector<std::string>& rng_states) {
    checkpoint::save_model_state(*module_, dir / checkpoint::model_file);
    // A new best records itself: evaluation precedes saving in the same step (HF §8.6).
    if (state_.best_global_step && args_.save_strategy != SaveStrategy::no) {
      const auto best_dir = checkpoint::dir_for(args_.output_dir, *state_.best_global_step);
      if (*state_.best_global_step == state_.global_step || checkpoint::is_complete(best_dir))
        state_.best_model_checkpoint = best_dir.string();
    }
    if (!args_.save_only_model)
      checkpoint::save_training_state(dir, *optimizer_, *scheduler_, scaler_.get(), progress, rng_states);
    state_.stateful_callbacks = handler_.states(control_);
    checkpoint::save_state_and_args(dir, state_, args_);
  }

  checkpoint::Targets checkpoint_targets() {
    CallbackHandler* callbacks = args_.restore_callback_states_from_checkpoint ? &handler_ : nullptr;
    return {*module_,
            *optimizer_,
            *scheduler_,
            scaler_.get(),
            callbacks,
            &control_,
            distributed::world().rank,
            distributed::world().size};
  }

  // The checkpoint is read and checked whole before anything is loaded, so a refused one changes nothing.
  void resume_from(const std::filesystem::path& dir, int64_t max_steps) {
    const checkpoint::Targets targets = checkpoint_targets();
    checkpoint::Checkpoint loaded = checkpoint::read(dir, targets);
    checkpoint::apply(loaded, targets);
    if (loaded.state.train_batch_size && *loaded.state.train_batch_size != args_.per_device_train_batch_size)
      log::warning(
          "resuming from {} with --per_device_train_batch_size {} although it was trained with {}: the "
          "data position will not match",
          dir.string(), args_.per_device_train_batch_size, *loaded.state.train_batch_size);

    // Interval steps follow the current arguments (HF keeps the checkpoint's, #28867); say so when they differ.
    const TrainerState current = state_;
    state_ = std::move(loaded.state);
    state_.compute_steps(args_, max_steps);
    if (state_.logging_steps != current.logging_steps || state_.eval_steps != current.eval_steps ||
        state_.save_steps != current.save_steps)
      log::info("resuming with this run's logging/eval/save steps");
    loss_.restore(loaded.progress);
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
  bool exit_on_signal_ = true;
  int interrupted_by_ = 0;

  // What one train() call works with.
  Session session_;
  LossWindow loss_;
  TokenCounter tokens_;
  std::optional<OptimizationStep> optimization_;
  distributed::DataParallel data_parallel_;
  LoaderInfo train_loader_info_;
  EvaluationLoop<Model, EvalData> evaluation_{LoopContext{args_, state_, control_, handler_, device_}, model_,
                                              loss_fn_, compute_metrics_};
};

template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction) -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction,
          typename MetricsFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction, MetricsFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, EvalData, LossFunction,
        std::function<Logs(const EvalPrediction&)>, CallbackList) -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, LossFunction) -> Trainer<Model, TrainData, TrainData>;
template <typename Model, typename TrainData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, LossFunction, CallbackList)
    -> Trainer<Model, TrainData, TrainData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction,
          typename MetricsFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction, MetricsFunction)
    -> Trainer<Model, TrainData, EvalData>;
template <typename Model, typename TrainData, typename EvalData, typename LossFunction>
Trainer(Model, TrainingArguments, TrainData, NamedDatasets<EvalData>, LossFunction,
        std::function<Logs(const EvalPrediction&)>, CallbackList) -> Trainer<Model, TrainData, EvalData>;

}  // namespace torchfit
