#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the trainer_state.json fixtures of tests/test_state.cpp with Python's own json module, exactly as
transformers' TrainerState.save_to_json does: json.dumps(asdict(state), indent=2, sort_keys=True) + "\n".

Run from anywhere: python3 tests/data/make_state_fixtures.py (the output is deterministic).
"""
import json
import math
import pathlib
import random
import struct

HERE = pathlib.Path(__file__).resolve().parent


def save(name, state):
    (HERE / name).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def default_state():
    """TrainerState() as a dict, keys in HF's declaration order. total_flos is 0.0: the Trainer accumulates it
    with float(...), so every saved state holds a float (torchfit always writes one)."""
    return {
        "epoch": None, "global_step": 0, "max_steps": 0, "logging_steps": 500, "eval_steps": 500,
        "save_steps": 500, "train_batch_size": None, "num_train_epochs": 0, "num_input_tokens_seen": 0,
        "total_flos": 0.0, "log_history": [], "best_metric": None, "best_global_step": None,
        "best_model_checkpoint": None, "is_local_process_zero": True, "is_world_process_zero": True,
        "is_hyper_param_search": False, "trial_name": None, "trial_params": None, "stateful_callbacks": {},
    }


def control(should_save=False, should_training_stop=False):
    return {"args": {"should_epoch_stop": False, "should_evaluate": False, "should_log": False,
                     "should_save": should_save, "should_training_stop": should_training_stop},
            "attributes": {}}


def early_stopping(patience, threshold, counter):
    return {"args": {"early_stopping_patience": patience, "early_stopping_threshold": threshold},
            "attributes": {"early_stopping_patience_counter": counter}}


# (a) The example of hf_semantics.md section 1.10.
hf_example = default_state() | {
    "epoch": 0.8, "global_step": 100, "max_steps": 500, "logging_steps": 10, "save_steps": 100,
    "train_batch_size": 4, "num_train_epochs": 4, "total_flos": 71253452390400.0,
    "log_history": [{"loss": 1.3254, "grad_norm": 0.476042240858078, "learning_rate": 0.00040100000000000004,
                     "epoch": 0.8, "step": 100}],
    "stateful_callbacks": {"TrainerControl": control(should_save=True)},
}

# (b) Every float form repr can take, non-finite values, ints beyond 2**53 (and one beyond int64), escapes,
# non-ASCII and astral characters (also in keys, to check code-point key order), the three log entry shapes,
# and callback states with two instances of one class.
inf, nan = math.inf, math.nan
tricky = default_state() | {
    "epoch": 3.0, "global_step": 2**53 + 1, "max_steps": 2**62, "logging_steps": 10, "eval_steps": 25,
    "save_steps": 50, "train_batch_size": 32, "num_train_epochs": 3, "num_input_tokens_seen": 2**62,
    "total_flos": 1.2345678901234568e+17,
    "log_history": [
        {"loss": 0.30000000000000004, "grad_norm": 5e-324, "learning_rate": 1e-05, "epoch": 0.1, "step": 10},
        {"loss": nan, "grad_norm": inf, "learning_rate": 1.5e-07, "epoch": 0.2, "num_input_tokens_seen": 2**53 + 1,
         "train_tokens_per_second": 7800683751619200.0, "step": 20},
        {"eval_loss": -inf, "eval_accuracy": 1.7976931348623157e+308, "eval_f1": -0.0,
         "eval_runtime": 0.00040100000000000004, "eval_samples_per_second": 1e+16, "eval_steps_per_second": 2.0,
         "epoch": 0.2, "step": 20},
        {"eval_café_accuracy": 0.5, "eval_😀_loss": 0.25, "eval_ZZ": 1, "eval_～": 2, "eval__": -7,
         "note": "naïve \"quoted\" 'single' \\ tab\t nl\n cr\r ctrl\x01\x1f del\x7f bs\b ff\f 😀 训练",
         "epoch": 0.2, "step": 20},
        {"train_runtime": 12.3456, "train_samples_per_second": 81.0, "train_steps_per_second": 1.62,
         "total_flos": 1.2345678901234568e+17, "train_loss": 0.1, "epoch": 3.0, "step": 2**53 + 1,
         "uint64_max": 2**64 - 1},
    ],
    "best_metric": -inf, "best_global_step": 20, "best_model_checkpoint": "out/chéckpoint-20 🚀",
    "is_local_process_zero": False, "is_world_process_zero": False, "is_hyper_param_search": True,
    "trial_name": "试验-1",
    "trial_params": {"learning_rate": 1e-05, "layers": [64, 32], "no_layers": [], "extra": {}, "name": "naïve 😀",
                     "use_bias": True, "dropout": None},
    "stateful_callbacks": {"TrainerControl": control(should_save=True, should_training_stop=True),
                           "EarlyStoppingCallback": [early_stopping(3, 0.0, 1), early_stopping(5, 0.001, 0)]},
}

save("state_hf_example.json", hf_example)
save("state_tricky.json", tricky)
save("state_default.json", default_state())


# repr(float) reference table: [IEEE-754 bits as 16 hex digits, repr]. Random bit patterns cover every exponent;
# short decimals and values around the positional/scientific switch cover the digit layouts.
rng = random.Random(20240531)
values = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e+308, 0.0001, 9.999999999999999e-05,
          1e-05, 1e16, 9999999999999998.0, 1e15, 123456789012345.67, 0.1, 0.2, 0.30000000000000004, 1 / 3]
while len(values) < 1200:
    (v,) = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))
    if math.isfinite(v):
        values.append(v)
while len(values) < 2000:
    values.append(round(rng.uniform(-1, 1) * 10 ** rng.randint(-8, 20), rng.randint(0, 12)))
cases = [[struct.pack(">d", v).hex(), repr(v)] for v in values]
(HERE / "state_float_reprs.json").write_text(json.dumps({"cases": cases}) + "\n", encoding="utf-8")
