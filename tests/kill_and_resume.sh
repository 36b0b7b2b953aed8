#!/usr/bin/env bash
# Kills a training program (SIGKILL) at several moments, resumes it each time with
# --resume_from_checkpoint last, and checks that it ends with the same weights and log_history (wall-clock fields
# aside) as a run that was never interrupted.
# Usage: kill_and_resume.sh PROGRAM WORK_DIR [PROGRAM ARGS...]
set -euo pipefail
program=$1 work=$2
shift 2
rm -rf "$work" && mkdir -p "$work"

"$program" --output_dir "$work/reference" --disable_tqdm "$@" >"$work/reference.log" 2>&1

# Strip the fields that measure time, then compare.
comparable() {
  python3 -c '
import json, sys
state = json.load(open(sys.argv[1]))
for entry in state["log_history"]:
    for key in list(entry):
        if key.endswith("_runtime") or key.endswith("_per_second"):
            del entry[key]
print(json.dumps(state["log_history"], sort_keys=True))' "$1"
}

for delay in 1 2.5 4; do
  out="$work/killed_$delay"
  "$program" --output_dir "$out" --disable_tqdm "$@" >"$out.log" 2>&1 &
  pid=$!
  sleep "$delay"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if ! ls -d "$out"/checkpoint-* >/dev/null 2>&1; then
    echo "no checkpoint after ${delay}s; resuming from scratch"
    "$program" --output_dir "$out" --disable_tqdm "$@" >>"$out.log" 2>&1
  else
    "$program" --output_dir "$out" --disable_tqdm --resume_from_checkpoint last "$@" >>"$out.log" 2>&1
  fi
  cmp "$work/reference/model.safetensors" "$out/model.safetensors"
  if [ "$(comparable "$work/reference/trainer_state.json")" != "$(comparable "$out/trainer_state.json")" ]; then
    echo "log_history differs after a kill at ${delay}s"
    exit 1
  fi
  echo "killed after ${delay}s, resumed: same weights and log_history"
done
