# SPDX-License-Identifier: MIT
"""bench/trainer_overhead's MLP workload through Hugging Face's real Trainer and a plain PyTorch loop, alternating
repetitions with torchfit, and the ratios of each repetition.

Each repetition runs, back to back: the C++ benchmark once (`trainer_overhead --workload mlp --reps 1`: its
hand-written libtorch loop and the torchfit Trainer with each --optim it has), a plain PyTorch loop, then HF's Trainer
with optim adamw_torch and with adamw_torch_fused. All train the MLP 784-256-256-10 on 12,800 synthetic samples,
batch 64, 400 steps, AdamW (lr 1e-3, no weight decay), clipping at 1.0, a constant learning rate and a log every 50
steps, one thread each. Times include building the optimizer (and the Trainer, for both Trainers).

Run it with scripts/hf-side-by-side.sh, which builds the C++ benchmark and runs this in the Debian 13 chroot
(python3-torch 2.6, transformers 4.57.1).

    hf-python bench/hf_side_by_side.py --trainer-overhead PATH [--reps N]
"""
import argparse
import contextlib
import io
import statistics
import subprocess
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers

SEED = 42  # data order (seed + epoch), as in the C++ benchmark
INIT_SEED = 1234  # initial weights
STEPS = 400
BATCH = 64
LOGGING_STEPS = 50


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.fc3 = torch.nn.Linear(256, 10)

    def forward(self, x, labels=None):
        logits = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def make_model():
    torch.manual_seed(INIT_SEED)
    return Mlp()


class Samples(torch.utils.data.Dataset):
    """One {"x", "labels"} dict per sample, which HF's default collator stacks into a batch."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def plain_loop(x, y):
    """The loop as one writes it in PyTorch. Returns ms per step."""
    model = make_model()
    start = time.perf_counter()
    torch.manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    n, step, epoch = len(x), 0, 0
    while step < STEPS:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch))
        for begin in range(0, n, BATCH):
            if step == STEPS:
                break
            indices = order[begin:begin + BATCH]
            loss = model(x[indices], y[indices])["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % LOGGING_STEPS == 0:
                loss.item()
        epoch += 1
    return (time.perf_counter() - start) * 1e3 / STEPS


def hf_trainer(dataset, optim, output_dir):
    """HF's Trainer with its progress bar and logs written to a discarded stream. Returns ms per step."""
    model = make_model()
    start = time.perf_counter()
    args = transformers.TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=1e-3,
        weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant", logging_steps=LOGGING_STEPS,
        save_strategy="no", report_to="none", use_cpu=True, seed=SEED, optim=optim, dataloader_num_workers=0)
    discard = io.StringIO()
    with contextlib.redirect_stdout(discard), contextlib.redirect_stderr(discard):
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset)
        out = trainer.train()
    assert out.global_step == STEPS, out
    return (time.perf_counter() - start) * 1e3 / STEPS


def torchfit_repetition(binary):
    """One repetition of the C++ benchmark: {"hand-written": ms, "adamw_torch": ms, ...} per step."""
    run = subprocess.run([binary, "--workload", "mlp", "--reps", "1"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{binary} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    text = run.stdout
    line = next(l for l in text.splitlines() if l.startswith("rep 1 "))  # "rep 1 <workload>: <name> <ms>, ..."
    return {field.split()[0]: float(field.split()[1]) for field in line.split(": ", 1)[1].split(", ")}


def summary(values):
    return f"{statistics.median(values):8.3f} [{min(values):.3f}, {max(values):.3f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer-overhead", required=True, help="path of the built bench/trainer_overhead")
    parser.add_argument("--reps", type=int, default=7)
    opt = parser.parse_args()

    generator = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH * 200, 784, generator=generator)
    y = torch.randint(0, 10, (BATCH * 200,), generator=generator)
    dataset = Samples(x, y)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)

    with tempfile.TemporaryDirectory() as output_dir:
        runs = {
            "python loop": lambda: plain_loop(x, y),
            "HF adamw_torch": lambda: hf_trainer(dataset, "adamw_torch", output_dir),
            "HF adamw_torch_fused": lambda: hf_trainer(dataset, "adamw_torch_fused", output_dir),
        }
        for run in runs.values():  # warm-up, discarded
            run()
        times = {}
        for rep in range(1, opt.reps + 1):
            measured = {f"torchfit {k}" if k.startswith("adamw") else f"C++ {k}": v
                        for k, v in torchfit_repetition(opt.trainer_overhead).items()}
            for name, run in runs.items():
                measured[name] = run()
            print(f"rep {rep}: " + ", ".join(f"{k} {v:.3f}" for k, v in measured.items()) + " ms/step", flush=True)
            for k, v in measured.items():
                times.setdefault(k, []).append(v)

    print(f"\n{'path':<28} {'ms/step median [min, max]':>30}")
    for name, values in times.items():
        print(f"{name:<28} {summary(values):>30}")
    best = "torchfit adamw_torch_fused" if "torchfit adamw_torch_fused" in times else "torchfit adamw_torch"
    print(f"\nper-repetition ratios (time per step, so > 1 means {best} is faster), median [min, max]:")
    for name in times:
        if name != best:
            ratios = [a / b for a, b in zip(times[name], times[best])]
            print(f"{name + ' / ' + best:<58} {summary(ratios)}")


if __name__ == "__main__":
    main()
